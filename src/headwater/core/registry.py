"""The component registry: name -> component, per kind, with helpful lookups."""

from __future__ import annotations

import difflib
from collections.abc import Iterator

from .components import Component, ComponentKind
from .errors import ComponentNotFound

__all__ = ["Registry"]


class Registry:
    """Holds every registered component, keyed by kind and name.

    Names are unique per kind across all plugins. Lookups of unknown names raise
    :class:`ComponentNotFound` with close matches as suggestions.
    """

    def __init__(self) -> None:
        self._by_kind: dict[ComponentKind, dict[str, Component]] = {k: {} for k in ComponentKind}

    def add(self, component: Component) -> None:
        """Add a component; raises ``ValueError`` naming both owners on a duplicate name."""
        table = self._by_kind[component.kind]
        existing = table.get(component.name)
        if existing is not None:
            raise ValueError(
                f"{component.kind} {component.name!r} is already registered by plugin "
                f"{existing.plugin!r}"
            )
        table[component.name] = component

    def remove(self, kind: ComponentKind | str, name: str) -> Component | None:
        """Remove and return a component (None when it is not registered)."""
        return self._by_kind[ComponentKind(kind)].pop(name, None)

    def owner_of(self, kind: ComponentKind, name: str) -> str | None:
        """The plugin owning ``kind``/``name``, or None when the name is free."""
        found = self._by_kind[kind].get(name)
        return found.plugin if found else None

    def get(self, kind: ComponentKind | str, name: str) -> Component:
        """The component named ``name``; raises ComponentNotFound with suggestions."""
        kind = ComponentKind(kind)
        table = self._by_kind[kind]
        try:
            return table[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(table), n=2, cutoff=0.6)
            raise ComponentNotFound(str(kind), name, close) from None

    def find(self, name: str) -> list[Component]:
        """Every component named ``name``, whatever its kind."""
        return [t[name] for t in self._by_kind.values() if name in t]

    def names(self, kind: ComponentKind | str) -> list[str]:
        """Sorted names of the registered components of one kind."""
        return sorted(self._by_kind[ComponentKind(kind)])

    def __iter__(self) -> Iterator[Component]:
        for kind in ComponentKind:
            yield from (self._by_kind[kind][n] for n in sorted(self._by_kind[kind]))

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_kind.values())
