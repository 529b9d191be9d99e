"""Component declarations: the decorators plugin authors use and the metadata they produce.

A *component* is one named, documented unit a pipeline can use: a stream action (source),
a transformer, a sink or a metrics exporter. Authors declare one with a decorator; the
decorator returns a :class:`Component` that carries the wrapped object plus everything
that can be known without running it (name, params model, capabilities, ...). The
registering plugin and its distribution are filled in by the plugin manager.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = [
    "Capability",
    "Component",
    "ComponentKind",
    "Delivery",
    "FunctionShape",
    "LazyComponent",
    "TransformerKind",
    "action",
    "checkpoint_store",
    "exporter",
    "sink",
    "transformer",
]


class ComponentKind(StrEnum):
    """The four kinds of component a plugin can contribute."""

    ACTION = "action"
    TRANSFORMER = "transformer"
    SINK = "sink"
    EXPORTER = "exporter"
    CHECKPOINT_STORE = "checkpoint_store"

    @property
    def hook(self) -> str:
        """The collection hook that contributes components of this kind
        (``register_actions`` for actions, ...): the one table of kinds and hooks."""
        return _HOOK_OF_KIND[self]


_HOOK_OF_KIND: dict[ComponentKind, str] = {
    ComponentKind.ACTION: "register_actions",
    ComponentKind.TRANSFORMER: "register_transformers",
    ComponentKind.SINK: "register_sinks",
    ComponentKind.EXPORTER: "register_metrics_exporters",
    ComponentKind.CHECKPOINT_STORE: "register_checkpoint_stores",
}


class Capability(StrEnum):
    """Capabilities a component can declare; shown by ``headwater describe``."""

    STREAMING = "streaming"
    """Produces more than one chunk, incrementally."""
    RESUMABLE = "resumable"
    """Can restart from a committed position."""
    PROGRESS = "progress"
    """Reports progress events (done/total)."""
    TRANSACTIONAL = "transactional"
    """A sink that commits data atomically."""
    STATEFUL = "stateful"
    """A transformer that keeps state across items."""


TransformerKind = Literal["map", "filter", "flat_map", "batch", "stream"]
"""How a transformer processes data.

``map``, ``filter`` and ``flat_map`` are *item-wise*: a function of one item. ``batch`` is
a function from a list of items to a list of items (optionally with a ``flush()``); these
four are fused by the runtime into one loop over each batch. ``stream`` is an async
generator over an async iterator of items: it may hold items back, emit at any time, and
see the end of the stream.
"""

Delivery = Literal["at_least_once", "transactional"]
"""Delivery guarantee a sink declares."""

FunctionShape = Literal["async_gen", "sync_gen", "coroutine", "function", "class"]
"""What the author's callable is, detected once at declaration time."""

ITEMWISE_KINDS: frozenset[str] = frozenset({"map", "filter", "flat_map", "batch"})


@dataclass(frozen=True, slots=True)
class LazyComponent:
    """A component registered by name and imported when a pipeline first uses it.

    ``register(LazyComponent("weather.fetch", "acme_weather.fetch:fetch"))`` in a
    collection hook puts the name in the registry without importing ``acme_weather.fetch``:
    ``headwater run`` of a pipeline that does not name the component never pays for that
    import. ``target`` is ``"module:attribute"``; the attribute must be the component the
    decorator returned, of the hook's kind and with this name (checked when it is loaded).
    """

    name: str
    target: str

    def load(self) -> Component:
        """Import :attr:`target` and return the component it names.

        Raises ``ImportError``, ``AttributeError`` or ``TypeError`` (naming the target)
        when the module is missing, the attribute is absent or is not a component of
        this name.
        """
        import importlib

        module_name, sep, attribute = self.target.partition(":")
        if not sep or not module_name or not attribute:
            raise ValueError(f"target {self.target!r} is not 'module:attribute'")
        found: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
        if not isinstance(found, Component):
            raise TypeError(
                f"{self.target} is {type(found).__name__}, not a component; decorate it "
                "with @headwater.action, @headwater.transformer, ..."
            )
        if found.name != self.name:
            raise TypeError(f"{self.target} is the component {found.name!r}, not {self.name!r}")
        return found


def _shape_of(obj: object) -> FunctionShape:
    if inspect.isclass(obj):
        return "class"
    if inspect.isasyncgenfunction(obj):
        return "async_gen"
    if inspect.isgeneratorfunction(obj):
        return "sync_gen"
    if inspect.iscoroutinefunction(obj):
        return "coroutine"
    if callable(obj):
        return "function"
    raise TypeError(f"a component must be a function or a class, not {type(obj).__name__}")


def _first_doc_paragraph(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


@dataclass(frozen=True, slots=True)
class Component:
    """A declared component and its discoverable metadata.

    Instances are created by the :func:`action`, :func:`transformer`, :func:`sink` and
    :func:`exporter` decorators; ``plugin``, ``distribution`` and ``version`` are filled
    in when a plugin registers the component.
    """

    kind: ComponentKind
    name: str
    obj: Callable[..., Any]
    shape: FunctionShape
    params: type[BaseModel] | None = None
    description: str = ""
    output: str = ""
    capabilities: frozenset[Capability] = frozenset()
    transformer_kind: TransformerKind | None = None
    factory: bool = False
    batched: bool = False
    delivery: Delivery | None = None
    fallback: str | None = None
    """For an action: the action run instead when this one fails before its first item."""
    sample_params: dict[str, Any] | None = None
    """Params ``headwater plugins --check`` runs the component with (None: it is not run)."""
    sample_input: list[Any] | None = None
    """Items ``headwater plugins --check`` feeds a transformer or a sink."""
    check: Callable[..., Any] | None = None
    """Connection check (``headwater validate --check-connections``): called as
    ``check(params, ctx)`` (``check(ctx)`` without a params model), sync or async; it
    reaches the service the component talks to without moving data, returns None or a
    short description of what it reached, and raises when it cannot reach it."""
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Metadata of the plugin's own; ``extra["connector"]`` (a connector's delivery
    facts) is part of :meth:`metadata`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped object directly (handy in unit tests of a plugin)."""
        return self.obj(*args, **kwargs)

    @property
    def qualified_name(self) -> str:
        """``plugin:name``, or just the name before registration."""
        return f"{self.plugin}:{self.name}" if self.plugin else self.name

    @property
    def itemwise(self) -> bool:
        """True for transformers the runtime can fuse into a per-batch loop."""
        return self.transformer_kind in ITEMWISE_KINDS

    def with_origin(self, plugin: str, distribution: str | None, version: str | None) -> Component:
        """Return a copy attributed to the registering plugin and its distribution."""
        return replace(self, plugin=plugin, distribution=distribution, version=version)

    def params_schema(self) -> dict[str, Any]:
        """JSON Schema of the params model (an empty object schema when there is none)."""
        if self.params is None:
            return {"type": "object", "properties": {}, "additionalProperties": False}
        return self.params.model_json_schema()

    def metadata(self) -> dict[str, Any]:
        """Everything known about the component, JSON-serialisable."""
        data: dict[str, Any] = {
            "name": self.name,
            "kind": str(self.kind),
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "description": self.description,
            "output": self.output,
            "capabilities": sorted(str(c) for c in self.capabilities),
            "params_schema": self.params_schema(),
        }
        if self.transformer_kind is not None:
            data["transformer_kind"] = self.transformer_kind
        if self.delivery is not None:
            data["delivery"] = self.delivery
        if self.fallback is not None:
            data["fallback"] = self.fallback
        if self.sample_params is not None:
            data["sample_params"] = self.sample_params
        if self.sample_input is not None:
            data["sample_input"] = self.sample_input
        if self.check is not None:
            data["connection_check"] = True
        if "connector" in self.extra:
            # a connector's delivery facts: guarantee, acknowledgement point, ordering...
            data["connector"] = dict(self.extra["connector"])
        return data


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or any(c.isspace() for c in name):
        raise ValueError(f"component name must be a non-empty string without spaces, got {name!r}")
    return name


def _check_params(params: object) -> None:
    if params is None:
        return
    from pydantic import BaseModel

    if not (inspect.isclass(params) and issubclass(params, BaseModel)):
        raise TypeError(f"params must be a pydantic BaseModel subclass, got {params!r}")


def _check_check(name: str, check: object) -> None:
    if check is not None and not callable(check):
        raise TypeError(f"the check of {name!r} must be a function, got {check!r}")


def _caps(values: Any) -> frozenset[Capability]:
    return frozenset(Capability(v) for v in values)


def action(
    name: str,
    *,
    params: type[BaseModel] | None = None,
    description: str | None = None,
    output: str = "",
    capabilities: tuple[str, ...] | list[str] = (),
    batched: bool = False,
    fallback: str | None = None,
    sample_params: dict[str, Any] | None = None,
    check: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Component]:
    """Declare a stream action (a source).

    The decorated callable is called as ``fn(params, ctx)`` (or ``fn(ctx)`` when there is
    no params model) and may be an async generator, a sync generator (run in a worker
    thread), a coroutine function or a plain function (their return value becomes a
    one-chunk stream). With ``batched=True`` every yielded value is a *list* of items,
    which lets fast sources skip per-item overhead.

    ``fallback`` names another action that runs, with the same params, when this one
    fails before its first item (a streaming API that is down, a faster tool that is not
    installed). It is used when it is registered and accepts the params; once a first
    item was produced, an error fails the run as usual.

    ``sample_params`` are params ``headwater plugins --check`` may run the action with (a
    bounded run without side effects); without them the check skips running it.

    ``check`` is the action's connection check (see :attr:`Component.check`), run by
    ``headwater validate --check-connections``.
    """
    _check_name(name)
    _check_params(params)
    _check_check(name, check)
    if fallback is not None:
        _check_name(fallback)
        if fallback == name:
            raise ValueError(f"action {name!r} cannot be its own fallback")

    def decorate(fn: Callable[..., Any]) -> Component:
        shape = _shape_of(fn)
        if shape == "class":
            raise TypeError(f"action {name!r} must be a function, not a class")
        caps = set(_caps(capabilities))
        if shape in ("async_gen", "sync_gen"):
            caps.add(Capability.STREAMING)
        return Component(
            kind=ComponentKind.ACTION,
            name=name,
            obj=fn,
            shape=shape,
            params=params,
            description=description if description is not None else _first_doc_paragraph(fn),
            output=output,
            capabilities=frozenset(caps),
            batched=batched,
            fallback=fallback,
            sample_params=sample_params,
            check=check,
        )

    return decorate


def transformer(
    name: str,
    *,
    kind: TransformerKind = "map",
    params: type[BaseModel] | None = None,
    description: str | None = None,
    output: str = "",
    capabilities: tuple[str, ...] | list[str] = (),
    factory: bool = False,
    sample_params: dict[str, Any] | None = None,
    sample_input: list[Any] | None = None,
    check: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Component]:
    """Declare a transformer.

    For ``map`` / ``filter`` / ``flat_map`` the decorated function takes one item (and
    ``params`` as second argument when a params model is declared) and returns the new
    item / a truth value / an iterable of items. With ``factory=True`` it is instead called
    once per run as ``fn(params, ctx)`` and returns that per-item function; ``batch``
    transformers are always factories returning ``list -> list``. The function a factory
    returns may also carry ``flush()`` (items emitted at the end of the stream),
    ``exhausted`` (True once it accepts no more input: upstream is stopped), and
    ``tick()`` with ``tick_interval`` seconds (items due by time, called even while no
    input arrives). ``stream`` transformers are async generator functions
    ``fn(items, params, ctx)`` over an async iterator.

    ``sample_params`` and ``sample_input`` let ``headwater plugins --check`` run the
    transformer on those items; without ``sample_input`` the check skips running it.
    ``check`` is the connection check of a transformer that talks to a service (see
    :attr:`Component.check`).
    """
    _check_name(name)
    _check_params(params)
    _check_check(name, check)

    def decorate(fn: Callable[..., Any]) -> Component:
        shape = _shape_of(fn)
        if kind == "stream" and shape != "async_gen":
            raise TypeError(f"stream transformer {name!r} must be an async generator function")
        if kind != "stream" and shape in ("async_gen", "class"):
            raise TypeError(
                f"{kind} transformer {name!r} must be a plain function; "
                "use kind='stream' for async generators"
            )
        return Component(
            kind=ComponentKind.TRANSFORMER,
            name=name,
            obj=fn,
            shape=shape,
            params=params,
            description=description if description is not None else _first_doc_paragraph(fn),
            output=output,
            capabilities=_caps(capabilities),
            transformer_kind=kind,
            factory=factory or kind == "batch",
            sample_params=sample_params,
            sample_input=list(sample_input) if sample_input is not None else None,
            check=check,
        )

    return decorate


def sink(
    name: str,
    *,
    params: type[BaseModel] | None = None,
    description: str | None = None,
    delivery: Delivery = "at_least_once",
    capabilities: tuple[str, ...] | list[str] = (),
    sample_params: dict[str, Any] | None = None,
    sample_input: list[Any] | None = None,
    check: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Component]:
    """Declare a sink.

    A sink is either a class or a function. A sink class is instantiated once per run as
    ``cls(params, ctx)`` (``cls(ctx)`` when it has no params model); its ``__init__`` may
    leave out the arguments it does not use. It may define ``open()``, ``write(batch)`` and
    ``close(error)``, each sync or async; ``close`` may return the sink's result. A function
    is called as ``fn(batch, params, ctx)`` (``fn(batch, ctx)`` without params) for every
    batch. Sinks receive lists of items, never single items.

    ``sample_params`` and ``sample_input`` let ``headwater plugins --check`` write those
    items with those params; leave them out for a sink with side effects (a database, a
    broker): the check then skips running it unless given params. ``check`` is the
    sink's connection check (see :attr:`Component.check`).
    """
    _check_name(name)
    _check_params(params)
    _check_check(name, check)

    def decorate(obj: Callable[..., Any]) -> Component:
        caps = set(_caps(capabilities))
        if delivery == "transactional":
            caps.add(Capability.TRANSACTIONAL)
        return Component(
            kind=ComponentKind.SINK,
            name=name,
            obj=obj,
            shape=_shape_of(obj),
            params=params,
            description=description if description is not None else _first_doc_paragraph(obj),
            capabilities=frozenset(caps),
            delivery=delivery,
            sample_params=sample_params,
            sample_input=list(sample_input) if sample_input is not None else None,
            check=check,
        )

    return decorate


def exporter(
    name: str,
    *,
    params: type[BaseModel] | None = None,
    description: str | None = None,
) -> Callable[[Callable[..., Any]], Component]:
    """Declare a metrics exporter (a class or factory receiving metric snapshots)."""
    _check_name(name)
    _check_params(params)

    def decorate(obj: Callable[..., Any]) -> Component:
        return Component(
            kind=ComponentKind.EXPORTER,
            name=name,
            obj=obj,
            shape=_shape_of(obj),
            params=params,
            description=description if description is not None else _first_doc_paragraph(obj),
        )

    return decorate


def checkpoint_store(
    name: str,
    *,
    params: type[BaseModel] | None = None,
    description: str | None = None,
    check: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Component]:
    """Declare a checkpoint store: a class instantiated as ``cls(params)`` (or ``cls()``)
    whose instances implement :class:`~headwater.core.checkpoints.CheckpointStore`.
    ``check`` is its connection check (see :attr:`Component.check`)."""
    _check_name(name)
    _check_params(params)
    _check_check(name, check)

    def decorate(obj: Callable[..., Any]) -> Component:
        if not inspect.isclass(obj):
            raise TypeError(f"checkpoint store {name!r} must be a class")
        return Component(
            kind=ComponentKind.CHECKPOINT_STORE,
            name=name,
            obj=obj,
            shape="class",
            params=params,
            description=description if description is not None else _first_doc_paragraph(obj),
            check=check,
        )

    return decorate
