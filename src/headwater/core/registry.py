"""The component registry: name -> component, per kind, with helpful lookups.

A plugin may register a :class:`~headwater.core.components.LazyComponent` instead of a
component: its name is known at once (for lookups, duplicates and listings of names),
its module is imported the first time the component itself is needed.
"""

from __future__ import annotations

import difflib
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .components import Component, ComponentKind, LazyComponent
from .errors import ComponentNotFound, ComponentUnavailable

__all__ = ["Registry", "UnavailableHandler"]

UnavailableHandler = Callable[[str, str, str, str], None]
"""Told ``(plugin, stage, error, traceback)`` when a lazily registered component fails to
load: stage ``import`` when its module could not be imported, ``register`` when the
target is not the component it was registered as."""


@dataclass(frozen=True, slots=True)
class _Pending:
    """A lazily registered component, with the origin of the plugin that registered it."""

    lazy: LazyComponent
    kind: ComponentKind
    plugin: str | None
    distribution: str | None
    version: str | None


class Registry:
    """Holds every registered component, keyed by kind and name.

    Names are unique per kind across all plugins. Lookups of unknown names raise
    :class:`ComponentNotFound` with close matches as suggestions; a lazily registered
    component whose import fails raises :class:`ComponentUnavailable` (and is reported
    once to ``on_unavailable``).
    """

    def __init__(self, on_unavailable: UnavailableHandler | None = None) -> None:
        self._by_kind: dict[ComponentKind, dict[str, Component | _Pending]] = {
            k: {} for k in ComponentKind
        }
        self._broken: dict[tuple[ComponentKind, str], str] = {}
        self._loading = threading.Lock()
        """Held while a lazy component is imported: threads asking for it at once (a
        server's worker threads) get one component object and one report of a failure."""
        self.on_unavailable = on_unavailable

    def add(self, component: Component) -> None:
        """Add a component; raises ``ValueError`` naming both owners on a duplicate name."""
        self._insert(component.kind, component.name, component)

    def add_lazy(
        self,
        kind: ComponentKind,
        lazy: LazyComponent,
        plugin: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ) -> None:
        """Add a component by name, imported when first needed (see :meth:`get`)."""
        self._insert(kind, lazy.name, _Pending(lazy, kind, plugin, distribution, version))

    def _insert(self, kind: ComponentKind, name: str, entry: Component | _Pending) -> None:
        table = self._by_kind[kind]
        existing = table.get(name)
        if existing is not None:
            raise ValueError(f"{kind} {name!r} is already registered by plugin {existing.plugin!r}")
        table[name] = entry

    def remove(self, kind: ComponentKind | str, name: str) -> Component | None:
        """Remove and return a component (None when it is not registered or was never
        loaded)."""
        kind = ComponentKind(kind)
        self._broken.pop((kind, name), None)
        entry = self._by_kind[kind].pop(name, None)
        return entry if isinstance(entry, Component) else None

    def owner_of(self, kind: ComponentKind, name: str) -> str | None:
        """The plugin owning ``kind``/``name``, or None when the name is free."""
        found = self._by_kind[kind].get(name)
        return found.plugin if found else None

    def get(self, kind: ComponentKind | str, name: str) -> Component:
        """The component named ``name``; raises ComponentNotFound with suggestions, or
        ComponentUnavailable when its module cannot be imported."""
        kind = ComponentKind(kind)
        table = self._by_kind[kind]
        try:
            entry = table[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(table), n=2, cutoff=0.6)
            raise ComponentNotFound(str(kind), name, close) from None
        if isinstance(entry, Component):
            return entry
        return self._load(entry)

    def _load(self, pending: _Pending) -> Component:
        """Import a lazily registered component and put it in its place."""
        with self._loading:
            current = self._by_kind[pending.kind].get(pending.lazy.name)
            if isinstance(current, Component):  # loaded by another thread meanwhile
                return current
            return self._load_locked(pending)

    def _load_locked(self, pending: _Pending) -> Component:
        key = (pending.kind, pending.lazy.name)
        error = self._broken.get(key)
        if error is None:
            try:
                component = pending.lazy.load()
                if component.kind is not pending.kind:
                    raise TypeError(
                        f"{pending.lazy.target} is the {component.kind} "
                        f"{component.name!r}, registered from {pending.kind.hook}"
                    )
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                self._broken[key] = error
                if self.on_unavailable is not None:
                    details = "".join(traceback.format_exception(exc))
                    what = f"{pending.kind} {pending.lazy.name!r}"
                    stage = "register" if isinstance(exc, TypeError | ValueError) else "import"
                    self.on_unavailable(pending.plugin or "?", stage, f"{what}: {error}", details)
            else:
                loaded = (
                    component
                    if pending.plugin is None
                    else component.with_origin(
                        pending.plugin, pending.distribution, pending.version
                    )
                )
                self._by_kind[pending.kind][pending.lazy.name] = loaded
                return loaded
        raise ComponentUnavailable(str(pending.kind), pending.lazy.name, pending.plugin, error)

    def find(self, name: str) -> list[Component]:
        """Every loadable component named ``name``, whatever its kind."""
        found = []
        for kind, table in self._by_kind.items():
            if name in table:
                try:
                    found.append(self.get(kind, name))
                except ComponentUnavailable:
                    continue
        return found

    def names(self, kind: ComponentKind | str) -> list[str]:
        """Sorted names of the registered components of one kind (nothing is imported)."""
        return sorted(self._by_kind[ComponentKind(kind)])

    def __iter__(self) -> Iterator[Component]:
        """Every loadable component, by kind and name (imports the lazy ones; those that
        fail are reported to ``on_unavailable`` and skipped)."""
        for kind in ComponentKind:
            for name in sorted(self._by_kind[kind]):
                try:
                    yield self.get(kind, name)
                except ComponentUnavailable:
                    continue

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_kind.values())
