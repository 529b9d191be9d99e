"""What the plugin manager records and checks of each plugin, apart from loading it.

:class:`LoadFailure` (a plugin that could not be loaded, and why), :class:`PluginInfo` (a
loaded or disabled plugin and its components), :func:`discovered` (entry points in load
order, each with its distribution's name and version) and :func:`plugin_api_mismatch`
(the plugin-API range a plugin declares).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint
from types import ModuleType
from typing import Any

from ..markers import PROJECT_NAME

__all__ = [
    "PLUGIN_API_ATTRIBUTE",
    "LoadFailure",
    "PluginInfo",
    "discovered",
    "module_name",
    "plugin_api_mismatch",
]


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A plugin that could not be loaded, and why."""

    plugin: str
    distribution: str | None
    version: str | None
    stage: str
    """``import``, ``register``, ``unknown-hook``, ``hook``, ``duplicate``, ``routes``
    (raised in ``register_routes``, or a route clashing with another; reported by the
    server) or ``run-stores`` (raised in ``register_run_stores``, or a store name that is
    taken)."""
    error: str
    traceback: str = ""

    def __str__(self) -> str:
        dist = f" from {self.distribution}" if self.distribution else ""
        if self.distribution and self.version:
            dist += f" {self.version}"
        return f"plugin {self.plugin!r}{dist} failed to load ({self.stage}): {self.error}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
            "stage": self.stage,
            "error": self.error,
        }


@dataclass(slots=True)
class PluginInfo:
    """A loaded (or disabled) plugin and the components it contributed."""

    name: str
    distribution: str | None
    version: str | None
    module: str | None
    components: list[str] = field(default_factory=list)
    disabled: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "components": list(self.components),
            "disabled": self.disabled,
        }


def discovered(eps: Iterable[EntryPoint]) -> list[tuple[EntryPoint, str | None, str | None]]:
    """``eps`` in load order (built-ins first, so that a third-party duplicate is the one
    reported and skipped), each with its distribution's name and version.

    Each ``dist.name`` or ``dist.version`` parses the distribution's whole METADATA file
    (long description included); the built-ins alone are 14 entry points of one
    distribution, so each file is read once here.
    """
    origins: dict[int, tuple[str | None, str | None]] = {}
    found: list[tuple[EntryPoint, str | None, str | None]] = []
    for ep in eps:
        dist = ep.dist
        if dist is None:
            found.append((ep, None, None))
            continue
        if id(dist) not in origins:
            metadata = dist.metadata
            origins[id(dist)] = (metadata["Name"], metadata["Version"])
        found.append((ep, *origins[id(dist)]))

    def order(entry: tuple[EntryPoint, str | None, str | None]) -> tuple[int, str, str]:
        dist = entry[1] or ""
        return (0 if dist == PROJECT_NAME else 1, dist.lower(), entry[0].name)

    return sorted(found, key=order)


PLUGIN_API_ATTRIBUTE = "HEADWATER_PLUGIN_API"
"""The module attribute where a plugin declares the plugin-API range it targets."""


def plugin_api_mismatch(plugin: object) -> str | None:
    """Why ``plugin`` cannot load on this headwater's plugin API, or None.

    A plugin declares the range of plugin-API versions it was written for as a PEP 440
    specifier, ``HEADWATER_PLUGIN_API = ">=1,<2"``, on its module (or object); a plugin
    that declares nothing is assumed to fit. An unparsable specifier is an error too.
    """
    declared = getattr(plugin, PLUGIN_API_ATTRIBUTE, None)
    if declared is None:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    from .. import PLUGIN_API, __version__

    try:
        wanted = SpecifierSet(str(declared))
    except InvalidSpecifier:
        return (
            f"{PLUGIN_API_ATTRIBUTE} = {declared!r} is not a plugin API version range "
            "(write a PEP 440 specifier such as '>=1,<2')"
        )
    if wanted.contains(PLUGIN_API, prereleases=True):
        return None
    return (
        f"targets headwater plugin API {wanted} but headwater {__version__} provides "
        f"plugin API {PLUGIN_API}: install a version of the plugin made for it, or a "
        "headwater that provides that API"
    )


def _module_name(plugin: object) -> str | None:
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return getattr(plugin, "__module__", None)


def module_name(plugin: object) -> str | None:
    """The module a plugin object is (or was defined in)."""
    if isinstance(plugin, ModuleType):
        return plugin.__name__
    return getattr(plugin, "__module__", None)
