"""Probe runs: the component under test in a private plugin manager, with small probe
components (a source, a collecting sink, an in-memory checkpoint store) around it.

Every probe run is bounded in time (:data:`STOP_GRACE`); the probe source sends
:data:`PROBE_ITEMS` items.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..core.checkpoints import Checkpoint
    from ..core.components import Component
    from ..core.context import StreamContext
    from ..core.events import Event
    from ..core.plugins import PluginManager
    from ..core.runtime import RunResult


STOP_GRACE = 3.0
"""Seconds a run may take to end after a cancel or a timeout."""
PROBE_ITEMS = 5
"""Items the probe source sends to a sink under test."""


class _Probe:
    """Shared state of one check's probe components (a fresh one per check)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.items: list[Any] = []
        self.stop_after = stop_after
        self.stop_on_commit = False
        """Stop once a checkpoint with positions is saved after ``stop_after`` items."""
        self.on_stop: Callable[[], None] = lambda: None
        self.on_first: Callable[[], None] = lambda: None
        self.generators: list[Any] = []
        self.checkpoints: dict[str, Checkpoint] = {}
        self.saved: list[Checkpoint] = []
        self.commits: list[Any] = []
        self.loads: list[Any] = []


def _probe_plugin(component: Component, probe: _Probe) -> object:
    """A plugin registering ``component`` (instrumented) and the probe components."""
    import headwater

    from ..core.components import ComponentKind
    from ..core.invoke import positional_arity

    under_test = component
    if component.kind is ComponentKind.ACTION and component.shape in ("async_gen", "sync_gen"):
        original = component.obj
        arity = positional_arity(original)

        def generator(*args: Any) -> Any:
            gen = original(*args[:arity])
            probe.generators.append(gen)
            return gen

        under_test = dataclasses.replace(component, obj=generator)
    elif component.kind is ComponentKind.SINK and component.shape == "class":
        base: Any = component.obj
        namespace: dict[str, Any] = {}
        if hasattr(base, "commit_checkpoint"):

            def commit_checkpoint(self: Any, checkpoint: Any) -> Any:
                probe.commits.append(checkpoint)
                return base.commit_checkpoint(self, checkpoint)

            namespace["commit_checkpoint"] = commit_checkpoint
        if hasattr(base, "load_checkpoint"):

            def load_checkpoint(self: Any) -> Any:
                held = base.load_checkpoint(self)
                probe.loads.append(held)
                return held

            namespace["load_checkpoint"] = load_checkpoint
        under_test = dataclasses.replace(component, obj=type(base.__name__, (base,), namespace))

    @headwater.action(
        "conformance.source",
        description="Probe: dicts with positions.",
        capabilities=("resumable",),
    )
    async def source(ctx: StreamContext) -> AsyncIterator[dict[str, Any]]:
        start = int(ctx.resume_position or 0)
        for i in range(start, PROBE_ITEMS):
            yield {"id": i, "text": f"item {i}"}
            ctx.checkpoint(i + 1)

    @headwater.sink("conformance.collect", description="Probe: keeps what it receives.")
    class Collect:
        def __init__(self, ctx: StreamContext) -> None:
            self.ctx = ctx

        def write(self, batch: list[Any]) -> None:
            if batch and not probe.items:
                probe.on_first()
            probe.items.extend(batch)
            if probe.stop_on_commit:
                return
            if probe.stop_after is not None and len(probe.items) >= probe.stop_after:
                probe.on_stop()

    @headwater.checkpoint_store("memory", description="Probe: shared in-memory store.")
    class Store:
        def load(self, pipeline: str) -> Checkpoint | None:
            return probe.checkpoints.get(pipeline)

        def save(self, checkpoint: Checkpoint) -> None:
            probe.checkpoints[checkpoint.pipeline] = checkpoint
            probe.saved.append(checkpoint)
            enough = probe.stop_after is None or len(probe.items) >= probe.stop_after
            if probe.stop_on_commit and checkpoint.positions and enough:
                probe.on_stop()

        def list(self) -> list[Checkpoint]:
            return list(probe.checkpoints.values())

        def reset(self, pipeline: str) -> bool:
            return probe.checkpoints.pop(pipeline, None) is not None

        def close(self) -> None:
            """Nothing to release."""

    hooks: dict[str, list[Any]] = {kind.hook: [] for kind in ComponentKind}
    hooks[ComponentKind.ACTION.hook].append(source)
    hooks[ComponentKind.SINK.hook].append(Collect)
    hooks[ComponentKind.CHECKPOINT_STORE.hook].append(Store)
    hooks[component.kind.hook].append(under_test)

    class ProbePlugin:
        @headwater.hookimpl
        def register_actions(self, register: Callable[[Any], None]) -> None:
            for item in hooks["register_actions"]:
                register(item)

        @headwater.hookimpl
        def register_sinks(self, register: Callable[[Any], None]) -> None:
            for item in hooks["register_sinks"]:
                register(item)

        @headwater.hookimpl
        def register_checkpoint_stores(self, register: Callable[[Any], None]) -> None:
            for item in hooks["register_checkpoint_stores"]:
                register(item)

        @headwater.hookimpl
        def register_transformers(self, register: Callable[[Any], None]) -> None:
            for item in hooks["register_transformers"]:
                register(item)

        @headwater.hookimpl
        def register_metrics_exporters(self, register: Callable[[Any], None]) -> None:
            for item in hooks["register_metrics_exporters"]:
                register(item)

    return ProbePlugin()


def _manager(component: Component, probe: _Probe) -> PluginManager:
    from ..core.plugins import PluginManager

    manager = PluginManager(load_entry_points=False, strict=True)
    manager.register(_probe_plugin(component, probe), "conformance")
    return manager


def _action_spec(
    component: Component, params: Mapping[str, Any], name: str, **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "sources": {"source": {"action": component.name, "params": dict(params)}},
        "sinks": [{"sink": "conformance.collect"}],
        **extra,
    }


def _first_error(result: RunResult) -> str:
    if not result.errors:
        return result.state
    exc = result.errors[0]
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {cause}"


def _closed(gen: Any) -> bool:
    frame = getattr(gen, "ag_frame", None) if hasattr(gen, "ag_frame") else gen.gi_frame
    return frame is None


async def _observe(
    component: Component,
    params: Mapping[str, Any],
    *,
    name: str,
    probe: _Probe,
    cancel_when: Literal["first", "stop", "never"],
    wait: float,
    resume: bool = False,
    **extra: Any,
) -> tuple[RunResult | None, list[Event], float]:
    """Run the action into the probe sink; returns (result or None if stuck, events, s)."""
    import anyio

    from ..core.api import open_run

    events: list[Event] = []
    result: RunResult | None = None
    manager = _manager(component, probe)
    started = time.monotonic()
    spec = _action_spec(component, params, name, **extra)
    with anyio.move_on_after(wait + 2 * STOP_GRACE):
        async with open_run(spec, plugins=manager, resume=resume) as handle:
            triggered = anyio.Event()
            if cancel_when == "first":
                probe.on_first = triggered.set
            elif cancel_when == "stop":
                probe.on_stop = triggered.set

            async def consume() -> None:
                async for event in handle.events():
                    events.append(event)

            async def ended() -> None:
                await handle.wait()
                triggered.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                tg.start_soon(ended)
                if cancel_when != "never":
                    with anyio.move_on_after(wait):
                        await triggered.wait()
                    if not handle.done:
                        handle.cancel("conformance check")
                with anyio.move_on_after(wait + STOP_GRACE):
                    result = await handle.wait()
                tg.cancel_scope.cancel()
    return result, events, time.monotonic() - started
