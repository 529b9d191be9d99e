"""Which Python callables a pipeline may name: the sandbox's allow-list for ``fn`` params.

A pipeline file or a client names a function as text (``"operator:add"``); importing
and calling whatever it names would run arbitrary code (``subprocess:getoutput``). So
a name is checked against the allow-list of the :class:`~headwater.SandboxPolicy`
*before* anything is imported, and what the import finds is checked again:

- the default allows a few pure builtins (:data:`DEFAULT_BUILTINS`) and the public
  callables of :data:`DEFAULT_MODULES` (``operator``, ``math``, ``statistics``, ``json``,
  ``re``, ``datetime``);
- :attr:`SandboxPolicy.callables <headwater.SandboxPolicy.callables>` adds module names
  (``mypkg.fns``: every public callable defined in it, or listed in its ``__all__``) and
  ``module:function`` globs (``mypkg.fns:clean_*``);
- names starting with ``_`` and the names of :data:`NEVER` (``eval``, ``exec``, ``open``,
  ``getattr``...) are refused whatever the lists say; an attribute chain
  (``datetime:datetime.fromisoformat``) may pass through classes, never through a
  module (``json:codecs.lookup`` is refused).

Real callables handed over from Python (an embedder's own functions) are trusted: only
text is checked.
"""

from __future__ import annotations

import builtins
import importlib
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from types import ModuleType
from typing import Any, Final

from .policy import SandboxPolicy

__all__ = [
    "DEFAULT_BUILTINS",
    "DEFAULT_MODULES",
    "NEVER",
    "allowed_summary",
    "resolve_callable",
]

DEFAULT_BUILTINS: Final = frozenset(
    {
        "abs",
        "all",
        "any",
        "bool",
        "float",
        "int",
        "len",
        "list",
        "max",
        "min",
        "repr",
        "round",
        "sorted",
        "str",
        "sum",
        "tuple",
    }
)
"""Builtins any pipeline may name (``builtins:len``): pure functions of their argument."""

DEFAULT_MODULES: Final[Mapping[str, frozenset[str]]] = {
    "datetime": frozenset(),
    "json": frozenset(),
    "math": frozenset(),
    # these three reach any attribute or call any object an item holds (dunder chains)
    "operator": frozenset({"attrgetter", "call", "methodcaller"}),
    "re": frozenset(),
    "statistics": frozenset(),
}
"""Modules whose public callables any pipeline may name, with the names left out."""

NEVER: Final = frozenset(
    {
        "__import__",
        "breakpoint",
        "compile",
        "delattr",
        "eval",
        "exec",
        "getattr",
        "globals",
        "input",
        "locals",
        "open",
        "setattr",
        "vars",
    }
)
"""Names refused even when an allow-list entry matches them."""

_NEVER_OBJECTS: Final = tuple(getattr(builtins, name) for name in sorted(NEVER))
_ENV_HINT: Final = "the operator can allow more with HEADWATER_ALLOW_CALLABLES or sandbox.callables"


def _split_name(value: Any) -> tuple[str, list[str]]:
    """``"pkg.mod:attr.sub"`` (or ``"pkg.mod.attr"``) as the module and attribute path."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected 'module:attribute' or a callable, got {value!r}")
    text = value.strip()
    module, sep, attr_path = text.partition(":")
    if not sep:
        module, _, attr_path = text.rpartition(".")
    parts = attr_path.split(".")
    if not module or not attr_path or not all(p.isidentifier() for p in module.split(".")):
        raise ValueError(f"expected 'module:attribute', got {value!r}")
    if not all(part.isidentifier() for part in parts):
        raise ValueError(f"expected 'module:attribute', got {value!r}")
    return module, parts


def allowed_summary(policy: SandboxPolicy) -> str:
    """What ``policy`` lets ``fn`` params name, for error messages."""
    names = ", ".join(sorted(DEFAULT_BUILTINS))
    modules = ", ".join(
        name + (f" (not {', '.join(sorted(left_out))})" if left_out else "")
        for name, left_out in sorted(DEFAULT_MODULES.items())
    )
    extra = f"; and {', '.join(policy.callables)}" if policy.callables else ""
    return f"builtins {names}; modules {modules}{extra}"


def _entry_rule(module: str, parts: list[str], policy: SandboxPolicy) -> str | None:
    """How the allow-list admits the name (checked before any import), or None.

    ``"exact"``: named exactly by a ``module:function`` entry; ``"module"``: the first
    attribute must be a public callable of the module (defined in it or in its
    ``__all__``).
    """
    if module == "builtins" and len(parts) == 1 and parts[0] in DEFAULT_BUILTINS:
        return "exact"
    full = f"{module}:{'.'.join(parts)}"
    if full in policy.callables:
        return "exact"
    left_out = DEFAULT_MODULES.get(module)
    if left_out is not None and parts[0] not in left_out:
        return "module"
    for entry in policy.callables:
        if fnmatchcase(full, entry) if ":" in entry else fnmatchcase(module, entry):
            return "module"
    return None


def _defined_in(module: ModuleType, name: str, obj: Any) -> bool:
    """True when ``name`` is the module's own: in its ``__all__``, or defined in it."""
    public = getattr(module, "__all__", None)
    if public is not None:
        return name in public
    return getattr(obj, "__module__", None) == module.__name__


def resolve_callable(value: Any, policy: SandboxPolicy) -> Callable[..., Any]:
    """The callable ``value`` names, if ``policy`` allows it; callables pass through.

    :param value: ``"pkg.mod:attr"`` (or ``"pkg.mod.attr"``), or a callable.
    :param policy: The sandbox whose allow-list the name must be on.
    :raises ValueError: Naming the refused or unknown callable (a params validation
        error); nothing is imported for a refused name.
    """
    if callable(value):
        return value  # type: ignore[no-any-return]
    module_name, parts = _split_name(value)
    text = f"{module_name}:{'.'.join(parts)}"
    rule: str | None = "exact"
    if not policy.unrestricted:
        refused = f"callable {text!r} is not allowed by the sandbox policy"
        if any(p.startswith("_") for p in [*module_name.split("."), *parts]):
            raise ValueError(f"{refused}: names starting with '_' are never allowed")
        never = sorted(NEVER.intersection(parts))
        if never:
            raise ValueError(f"{refused}: {never[0]!r} is never allowed")
        rule = _entry_rule(module_name, parts, policy)
        if rule is None:
            raise ValueError(f"{refused}; allowed: {allowed_summary(policy)}; {_ENV_HINT}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    module = obj
    for i, part in enumerate(parts):
        try:
            found = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"module {module_name!r} has no attribute {'.'.join(parts)!r}"
            ) from None
        if not policy.unrestricted:
            if i < len(parts) - 1 and not isinstance(found, type):
                kind = "module" if isinstance(found, ModuleType) else type(found).__name__
                raise ValueError(
                    f"callable {text!r} is not allowed by the sandbox policy: "
                    f"{'.'.join(parts[: i + 1])!r} is a {kind}, and a name may only reach "
                    "through classes"
                )
            if i == 0 and rule == "module" and not _defined_in(module, part, found):
                raise ValueError(
                    f"callable {text!r} is not allowed by the sandbox policy: {part!r} is "
                    f"not defined in {module_name!r} (an entry naming {text!r} exactly "
                    f"allows it; {_ENV_HINT})"
                )
        obj = found
    if not callable(obj):
        raise ValueError(f"{text!r} is not callable ({type(obj).__name__})")
    if not policy.unrestricted and any(obj is never for never in _NEVER_OBJECTS):
        raise ValueError(
            f"callable {text!r} is not allowed by the sandbox policy: it is "
            f"{obj.__name__!r}, which is never allowed"
        )
    return obj  # type: ignore[no-any-return]
