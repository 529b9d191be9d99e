"""The conformance kit: standard checks any registered component should pass.

:func:`check_component` runs, on one component, the checks that apply to its kind and the
capabilities it claims, each in a private plugin manager (the component under test plus
small probe components), and returns one :class:`CheckResult` per check:

``params_schema`` (every kind)
    The JSON Schema of the params model is a valid schema: checked against its
    metaschema when the optional ``jsonschema`` package is installed, else structurally
    (an object schema, well-formed ``properties`` / ``required`` / ``$defs``, known
    ``type`` names, resolvable local ``$ref`` s). headwater does not depend on
    ``jsonschema``.
``cancellation`` (actions)
    Cancelled after its first item (or after a short wait when none comes), the run ends
    promptly and the action's generator is closed, so its ``finally`` blocks ran. n/a for
    actions that are plain functions or coroutines (one chunk, nothing to close).
``progress`` (actions claiming ``progress``)
    The action reports at least one progress event.
``timeout`` (actions)
    A run with ``timeouts: {total: ...}`` ends with :class:`~headwater.PipelineTimeout`
    promptly (skipped when the stream ends before the timeout).
``resume`` (actions claiming ``resumable``)
    With ``checkpoint: {store: memory, every_items: 1}``, a run stopped after a few items
    and then resumed loses no item of the full stream, and commits a position.
``checkpoint_ack`` (sinks with ``commit_checkpoint`` or declaring transactional delivery)
    The sink's ``commit_checkpoint`` is called with the checkpoints of a checkpointed run,
    and its ``load_checkpoint`` (if it has one) returns the last committed checkpoint.

Checks that need to run the component use the ``params`` given, or else the defaults of
its params model; they are skipped ("needs params") when a required param has no default.
Every run is bounded in items and time.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .core.checkpoints import Checkpoint
    from .core.components import Component
    from .core.context import StreamContext
    from .core.events import Event
    from .core.plugins import PluginManager
    from .core.runtime import RunResult

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceError",
    "assert_conforms",
    "check_all",
    "check_component",
    "check_component_async",
]

Status = Literal["pass", "fail", "skip", "n/a"]

CHECKS: tuple[str, ...] = (
    "params_schema",
    "cancellation",
    "progress",
    "timeout",
    "resume",
    "checkpoint_ack",
)
"""Every check, in the order they run."""

FIRST_ITEM_WAIT = 0.3
"""Seconds the cancellation check waits for a first item before cancelling anyway."""
STOP_GRACE = 3.0
"""Seconds a run may take to end after a cancel or a timeout."""
TIMEOUT_TOTAL = 0.3
"""The ``timeouts.total`` of the timeout check, seconds."""
OBSERVE_ITEMS = 200
"""Items a progress or reference run reads at most."""
OBSERVE_SECONDS = 2.0
"""Seconds a progress or reference run lasts at most."""
RESUME_AFTER = 3
"""Items the first run of the resume check delivers before it is stopped."""
PROBE_ITEMS = 5
"""Items the probe source sends to a sink under test."""


class ConformanceError(AssertionError):
    """Raised by :func:`assert_conforms` when a check fails; lists the failures."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check on one component."""

    component: str
    """The component's name."""
    kind: str
    """Its kind (``action``, ``sink``, ...)."""
    check: str
    """The check's name (one of :data:`CHECKS`)."""
    status: Status
    """``pass``, ``fail``, ``skip`` (could not be checked, see detail) or ``n/a``."""
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True unless the check failed."""
        return self.status != "fail"

    def to_dict(self) -> dict[str, str]:
        """JSON-serialisable form."""
        return dataclasses.asdict(self)


# -- params -------------------------------------------------------------------------------


def _default_params(component: Component) -> tuple[dict[str, Any] | None, str]:
    """``({}, "")`` when the params model validates without input, else (None, why)."""
    if component.params is None:
        return {}, ""
    from pydantic import ValidationError

    try:
        component.params.model_validate({})
    except ValidationError:
        fields = component.params.model_fields
        required = [name for name, info in fields.items() if info.is_required()]
        return None, "needs params: " + ", ".join(required or ["(a valid value)"])
    return {}, ""


def _invalid_params(component: Component, params: Mapping[str, Any]) -> str:
    """Why ``params`` do not validate against the component's params model ("" if they do)."""
    if component.params is None:
        return "" if not params else f"takes no params, got {sorted(params)}"
    from pydantic import ValidationError

    try:
        component.params.model_validate(dict(params))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(params)'}: {e['msg']}" for e in exc.errors()
        )
        return f"invalid params: {problems}"
    return ""


_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "not", "additionalProperties", "if", "then", "else", "contains")


def _structural_problems(schema: Any) -> list[str]:
    """Problems of a JSON Schema found without ``jsonschema`` (empty: looks valid)."""
    if not isinstance(schema, dict):
        return [f"the schema is a {type(schema).__name__}, not an object"]
    problems: list[str] = []
    if schema.get("type") != "object":
        problems.append(f"top-level type is {schema.get('type')!r}, not 'object'")
    defs = schema.get("$defs", {})
    if not isinstance(defs, dict):
        problems.append("$defs is not an object")
        defs = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, bool):
            return
        if not isinstance(node, dict):
            problems.append(f"{path}: a schema must be an object or a boolean")
            return
        kind = node.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        for name in kinds:
            if name not in _TYPES:
                problems.append(f"{path}: unknown type {name!r}")
        ref = node.get("$ref")
        if ref is not None:
            target = ref.removeprefix("#/$defs/") if isinstance(ref, str) else None
            if not isinstance(ref, str) or (ref.startswith("#/") and target not in defs):
                problems.append(f"{path}: $ref {ref!r} does not resolve")
        props = node.get("properties")
        if props is not None:
            if not isinstance(props, dict):
                problems.append(f"{path}.properties is not an object")
            else:
                for key, sub in props.items():
                    walk(sub, f"{path}.properties.{key}")
        required = node.get("required")
        if required is not None:
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
                problems.append(f"{path}.required is not a list of strings")
            elif isinstance(props, dict):
                missing = [r for r in required if r not in props]
                if missing:
                    problems.append(f"{path}.required names unknown properties {missing}")
        for key in _SUBSCHEMA_LISTS:
            subs = node.get(key)
            if subs is not None:
                if not isinstance(subs, list):
                    problems.append(f"{path}.{key} is not a list")
                else:
                    for i, sub in enumerate(subs):
                        walk(sub, f"{path}.{key}[{i}]")
        for key in _SUBSCHEMA_ONE:
            if key in node:
                walk(node[key], f"{path}.{key}")

    walk(schema, "$")
    for name, sub in defs.items():
        walk(sub, f"$defs.{name}")
    return problems


def _check_params_schema(component: Component) -> tuple[Status, str]:
    try:
        schema = component.params_schema()
    except Exception as exc:
        return "fail", f"no JSON Schema: {type(exc).__name__}: {exc}"
    try:
        json.dumps(schema)
    except (TypeError, ValueError) as exc:
        return "fail", f"the schema is not JSON-serialisable: {exc}"
    problems = _structural_problems(schema)
    try:
        import jsonschema  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        method = "structural; install jsonschema for a metaschema check"
    else:
        method = "metaschema"
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            problems.insert(0, f"metaschema: {exc.message}")
    if problems:
        return "fail", "; ".join(problems)
    return "pass", f"valid ({method})"


# -- probes: a private manager with the component under test -------------------------------


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

    from .core.components import ComponentKind
    from .core.invoke import positional_arity

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

    hooks: dict[str, list[Any]] = {
        "register_actions": [source],
        "register_sinks": [Collect],
        "register_checkpoint_stores": [Store],
        "register_transformers": [],
        "register_metrics_exporters": [],
    }
    hook_of = {
        ComponentKind.ACTION: "register_actions",
        ComponentKind.SINK: "register_sinks",
        ComponentKind.CHECKPOINT_STORE: "register_checkpoint_stores",
        ComponentKind.TRANSFORMER: "register_transformers",
        ComponentKind.EXPORTER: "register_metrics_exporters",
    }
    hooks[hook_of[component.kind]].append(under_test)

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
    from .core.plugins import PluginManager

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

    from .core.api import open_run

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


# -- the action checks --------------------------------------------------------------------


async def _check_cancellation(component: Component, params: Mapping[str, Any]) -> CheckResult:
    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "action", "cancellation", status, detail)

    if component.shape not in ("async_gen", "sync_gen"):
        return res("n/a", f"a {component.shape} returns one chunk; nothing to cancel")
    probe = _Probe()
    result, _, took = await _observe(
        component,
        params,
        name="conformance-cancel",
        probe=probe,
        cancel_when="first",
        wait=FIRST_ITEM_WAIT,
    )
    if result is None:
        return res("fail", f"the run did not end within {STOP_GRACE:g} s of the cancel")
    if result.state == "failed":
        return res("fail", f"the run failed: {_first_error(result)}")
    if not probe.generators:
        return res("fail", "the action was never called")
    if not all(_closed(g) for g in probe.generators):
        return res("fail", "its generator was not closed: finally blocks did not run")
    if result.state == "succeeded":
        return res("pass", "the stream ended before the cancel; its generator was closed")
    after = "its first item" if probe.items else f"{FIRST_ITEM_WAIT:g} s without items"
    return res("pass", f"cancelled after {after}; closed in {took:.2f} s")


async def _check_progress(component: Component, params: Mapping[str, Any]) -> CheckResult:
    from .core.components import Capability

    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "action", "progress", status, detail)

    if Capability.PROGRESS not in component.capabilities:
        return res("n/a", "does not claim progress")
    probe = _Probe(stop_after=OBSERVE_ITEMS)
    result, events, _ = await _observe(
        component,
        params,
        name="conformance-progress",
        probe=probe,
        cancel_when="stop",
        wait=OBSERVE_SECONDS,
    )
    if result is not None and result.state == "failed":
        return res("fail", f"the run failed: {_first_error(result)}")
    reports = [e for e in events if getattr(e, "type", None) == "progress"]
    if not reports:
        return res("fail", f"claims progress but reported none in {len(probe.items)} items")
    return res("pass", f"{len(reports)} progress events in {len(probe.items)} items")


async def _check_timeout(component: Component, params: Mapping[str, Any]) -> CheckResult:
    from .core.errors import PipelineTimeout

    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "action", "timeout", status, detail)

    probe = _Probe()
    result, _, took = await _observe(
        component,
        params,
        name="conformance-timeout",
        probe=probe,
        cancel_when="never",
        wait=TIMEOUT_TOTAL,
        timeouts={"total": TIMEOUT_TOTAL},
    )
    if result is None:
        return res("fail", f"a {TIMEOUT_TOTAL:g} s timeout did not end the run within bounds")
    if result.state == "succeeded":
        return res("skip", f"the stream ended in {took:.2f} s, before the timeout")
    if result.state == "failed":
        return res("fail", f"the run failed: {_first_error(result)}")
    if not any(isinstance(e, PipelineTimeout) for e in result.errors):
        return res("fail", "the run was cancelled without PipelineTimeout")
    if took > TIMEOUT_TOTAL + STOP_GRACE:
        return res("fail", f"ended {took - TIMEOUT_TOTAL:.2f} s after its timeout")
    return res("pass", f"PipelineTimeout after {took:.2f} s (timeout {TIMEOUT_TOTAL:g} s)")


def _key(item: Any) -> str:
    try:
        return json.dumps(item, sort_keys=True, default=repr)
    except (TypeError, ValueError):
        return repr(item)


async def _check_resume(component: Component, params: Mapping[str, Any]) -> CheckResult:
    from .core.components import Capability

    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "action", "resume", status, detail)

    if Capability.RESUMABLE not in component.capabilities:
        return res("n/a", "does not claim resumable")
    reference = _Probe(stop_after=OBSERVE_ITEMS + 1)
    result, _, _ = await _observe(
        component,
        params,
        name="conformance-reference",
        probe=reference,
        cancel_when="stop",
        wait=OBSERVE_SECONDS,
    )
    if result is None or result.state == "cancelled":
        return res("skip", f"the stream does not end within {OBSERVE_ITEMS} items / 2 s")
    if result.state == "failed":
        return res("fail", f"the run failed: {_first_error(result)}")
    full = reference.items
    if len(full) < 2:
        return res("skip", f"{len(full)} item(s): too few to stop a run half-way")
    stop_after = min(RESUME_AFTER, len(full) - 1)
    probe = _Probe(stop_after=stop_after)
    probe.stop_on_commit = True
    checkpoint = {"store": "memory", "every_items": 1, "every_seconds": None}
    common: dict[str, Any] = {"checkpoint": checkpoint, "batch_size": 1, "buffer": 1}
    first, _, _ = await _observe(
        component,
        params,
        name="conformance-resume",
        probe=probe,
        cancel_when="stop",
        wait=OBSERVE_SECONDS,
        **common,
    )
    if first is None or first.state == "failed":
        return res("fail", "the first run failed" + (f": {_first_error(first)}" if first else ""))
    delivered = list(probe.items)
    committed = probe.checkpoints.get("conformance-resume")
    if committed is None or not committed.positions:
        return res("fail", "claims resumable but committed no position (ctx.checkpoint)")
    probe.items.clear()
    probe.stop_after = None
    probe.stop_on_commit = False
    second, _, _ = await _observe(
        component,
        params,
        name="conformance-resume",
        probe=probe,
        cancel_when="never",
        wait=OBSERVE_SECONDS,
        resume=True,
        **common,
    )
    if second is None or second.state != "succeeded":
        why = _first_error(second) if second is not None else "it did not end"
        return res("fail", f"the resumed run did not succeed: {why}")
    resumed = list(probe.items)
    lost = Counter(map(_key, full)) - Counter(map(_key, delivered + resumed))
    if lost:
        return res("fail", f"{sum(lost.values())} item(s) lost, e.g. {next(iter(lost))}")
    if committed.items > 0 and len(resumed) >= len(full):
        return res("fail", "the resumed run started over (ctx.resume_position ignored)")
    return res(
        "pass",
        f"stopped after {len(delivered)} of {len(full)} items, resumed at "
        f"{committed.positions} with {len(resumed)}; none lost",
    )


# -- the sink check -----------------------------------------------------------------------


async def _check_checkpoint_ack(component: Component, params: Mapping[str, Any]) -> CheckResult:
    from .core.checkpoints import Checkpoint

    def res(status: Status, detail: str) -> CheckResult:
        return CheckResult(component.name, "sink", "checkpoint_ack", status, detail)

    has_commit = component.shape == "class" and hasattr(component.obj, "commit_checkpoint")
    if not has_commit:
        if component.delivery == "transactional":
            return res("fail", "declares transactional delivery but has no commit_checkpoint")
        return res("n/a", "no commit_checkpoint")
    import anyio

    from .core.api import run

    probe = _Probe()
    manager = _manager(component, probe)
    spec = {
        "name": "conformance-ack",
        "sources": {"source": {"action": "conformance.source"}},
        "sinks": [{"sink": component.name, "params": dict(params)}],
        "checkpoint": {"store": "memory", "every_items": 1, "every_seconds": None},
    }
    with anyio.move_on_after(OBSERVE_SECONDS + STOP_GRACE):
        result = await run(spec, plugins=manager, raise_on_error=False)
        if result.state != "succeeded":
            return res("fail", f"the run failed: {_first_error(result)}")
        if not probe.commits:
            return res("fail", "commit_checkpoint was never called")
        last = probe.commits[-1]
        if not hasattr(component.obj, "load_checkpoint"):
            return res("pass", f"{len(probe.commits)} checkpoints committed")
        probe.loads.clear()
        await run(spec, plugins=manager, raise_on_error=False, resume=True)
        if not probe.loads:
            return res("fail", "load_checkpoint was not called on resume")
        held = probe.loads[-1]
        if isinstance(held, str):
            held = Checkpoint.from_json(held)
        elif isinstance(held, Mapping):
            held = Checkpoint(**held)
        if held is None:
            return res("fail", f"load_checkpoint returned None after commit {last.seq}")
        if (held.seq, held.positions) != (last.seq, last.positions):
            return res(
                "fail",
                f"load_checkpoint returned checkpoint {held.seq} {held.positions}, "
                f"the last committed is {last.seq} {last.positions}",
            )
        return res(
            "pass", f"{len(probe.commits)} commits; load_checkpoint returns the last ({last.seq})"
        )
    return res("fail", "the run did not end within bounds")


# -- entry points -------------------------------------------------------------------------


def _lookup(component: Component | str, plugins: Any) -> list[Component]:
    from .core.components import Component

    if isinstance(component, Component):
        return [component]
    from .core.plugins import PluginManager, get_plugin_manager

    if plugins is None:
        manager = get_plugin_manager()
    elif isinstance(plugins, PluginManager):
        manager = plugins
    else:
        from .testing import make_plugins

        manager = make_plugins(*plugins)
    kind, sep, name = component.partition(":")
    if sep:
        return [manager.registry.get(kind, name)]
    found = manager.load().registry.find(component)
    if not found:
        from .core.errors import ComponentNotFound

        raise ComponentNotFound("component", component, [])
    return found


async def check_component_async(
    component: Component | str,
    *,
    params: Mapping[str, Any] | None = None,
    plugins: PluginManager | Iterable[object] | None = None,
) -> list[CheckResult]:
    """:func:`check_component` for async code (tests running on an event loop)."""
    from .core.components import ComponentKind

    results: list[CheckResult] = []
    for comp in _lookup(component, plugins):
        kind = str(comp.kind)
        status, detail = _check_params_schema(comp)
        results.append(CheckResult(comp.name, kind, "params_schema", status, detail))
        if comp.kind not in (ComponentKind.ACTION, ComponentKind.SINK):
            continue
        names = (
            ("cancellation", "progress", "timeout", "resume")
            if comp.kind is ComponentKind.ACTION
            else ("checkpoint_ack",)
        )
        given: dict[str, Any] | None
        if params is not None:
            given = dict(params)
            why = _invalid_params(comp, given)
            if why:
                results.extend(CheckResult(comp.name, kind, n, "fail", why) for n in names)
                continue
        else:
            given, why = _default_params(comp)
        if given is None:
            results.extend(CheckResult(comp.name, kind, n, "skip", why) for n in names)
            continue
        if comp.kind is ComponentKind.ACTION:
            for check in (_check_cancellation, _check_progress, _check_timeout, _check_resume):
                results.append(await _guarded(check, comp, given))
        else:
            results.append(await _guarded(_check_checkpoint_ack, comp, given))
    return results


async def _guarded(check: Any, component: Component, params: dict[str, Any]) -> CheckResult:
    """Run one check; an unexpected error (invalid params, ...) fails that check only."""
    name = check.__name__.removeprefix("_check_")
    try:
        result: CheckResult = await check(component, params)
    except Exception as exc:
        return CheckResult(
            component.name, str(component.kind), name, "fail", f"{type(exc).__name__}: {exc}"
        )
    return result


def check_component(
    component: Component | str,
    *,
    params: Mapping[str, Any] | None = None,
    plugins: PluginManager | Iterable[object] | None = None,
) -> list[CheckResult]:
    """Run the standard checks on a component and return one result per check.

    :param component: A :class:`~headwater.Component`, or the name of a registered one
        (``kind:name`` when several kinds share the name; a bare shared name checks each).
    :param params: Params to run it with; default: its params model's defaults (checks
        that run it are skipped when a required param has no default).
    :param plugins: Where to look a name up: a plugin manager, plugin objects to register
        with the built-ins, or None for the process-wide manager.

    Starts its own event loop (asyncio); in async code use :func:`check_component_async`.
    """
    import anyio

    async def main() -> list[CheckResult]:
        return await check_component_async(component, params=params, plugins=plugins)

    return anyio.run(main)


def assert_conforms(
    component: Component | str,
    *,
    params: Mapping[str, Any] | None = None,
    plugins: PluginManager | Iterable[object] | None = None,
    allow_skips: bool = True,
) -> list[CheckResult]:
    """Run :func:`check_component` and raise :class:`ConformanceError` if a check fails.

    :param allow_skips: When False, a skipped check (e.g. "needs params") fails too.
    :returns: The results, for further assertions.
    """
    results = check_component(component, params=params, plugins=plugins)
    bad = [r for r in results if r.status == "fail" or (not allow_skips and r.status == "skip")]
    if bad:
        lines = "\n".join(
            f"  {r.kind} {r.component}: {r.check} {r.status}: {r.detail}" for r in bad
        )
        raise ConformanceError(f"{len(bad)} conformance check(s) failed:\n{lines}")
    return results


def check_all(manager: PluginManager) -> list[CheckResult]:
    """Check every component registered in ``manager`` with its default params.

    Components run with an empty standard input, so that a source reading stdin never
    consumes (or waits for) the caller's.
    """
    import io
    import sys

    import anyio

    async def main() -> list[CheckResult]:
        results: list[CheckResult] = []
        for component in list(manager.load().registry):
            results.extend(await check_component_async(component))
        return results

    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    try:
        return anyio.run(main)
    finally:
        sys.stdin = saved
