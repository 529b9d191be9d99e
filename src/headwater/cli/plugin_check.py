"""``headwater plugins --check``: the conformance kit plus a real run of each component.

Besides the conformance checks (:mod:`headwater.conformance`), every action, transformer
and sink that declares ``sample_params`` (and, for transformers and sinks,
``sample_input``) in its metadata is run once in a small bounded pipeline: an action into
``collect``, the sample input through a transformer into ``collect``, or into a sink.
Components without samples may have side effects (a shell command, a database, a
broker): they are skipped, with the reason, unless params are given for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..conformance import CheckResult
    from ..core.components import Component
    from ..core.plugins import LoadFailure, PluginManager

RUN_TIMEOUT = 20.0
"""Seconds a sample run may take before it fails."""

RUNNABLE_KINDS = ("action", "transformer", "sink")

DEFAULT_INPUT: tuple[dict[str, int], ...] = ({"n": 1}, {"n": 2}, {"n": 3})
"""Items fed to a transformer or a sink given ``--params`` but no ``sample_input``."""


class CheckUsageError(ValueError):
    """The plugin or the params given to ``--check`` are not usable."""


@dataclass(frozen=True, slots=True)
class ComponentReport:
    """The checks of one component, and its verdict: ``checked``, ``skipped`` or ``failed``."""

    component: Component
    results: list[CheckResult]

    @property
    def verdict(self) -> str:
        """``failed`` when a check failed, ``skipped`` when it was not run, else ``checked``."""
        if any(r.status == "fail" for r in self.results):
            return "failed"
        if any(r.check == "run" and r.status == "skip" for r in self.results):
            return "skipped"
        return "checked"


def select_components(manager: PluginManager, plugin: str | None) -> list[Component]:
    """The components of ``plugin`` (a plugin or distribution name), or all of them."""
    registry = list(manager.registry)
    if plugin is None:
        return registry
    wanted = plugin.strip().lower().replace("_", "-")
    names = {p.name for p in manager.plugins.values()}
    chosen = [
        p
        for p in manager.plugins.values()
        if p.name.lower().replace("_", "-") == wanted
        or (p.distribution or "").lower().replace("_", "-") == wanted
    ]
    if not chosen:
        known = ", ".join(sorted(names)) or "(none)"
        raise CheckUsageError(f"no plugin or distribution named {plugin!r}; installed: {known}")
    refs = {ref for p in chosen for ref in p.components}
    return [c for c in registry if f"{c.kind}:{c.name}" in refs]


def load_failures(manager: PluginManager, plugin: str | None) -> list[LoadFailure]:
    """The load failures of ``plugin`` (a plugin or distribution name), or all of them:
    after :func:`select_components`, those include its components that could not be
    imported, which a conformance check must not pass over."""
    if plugin is None:
        return list(manager.failures)
    wanted = plugin.strip().lower().replace("_", "-")
    return [
        f
        for f in manager.failures
        if f.plugin.lower().replace("_", "-") == wanted
        or (f.distribution or "").lower().replace("_", "-") == wanted
    ]


def parse_params(text: str | None, components: Sequence[Component]) -> dict[str, dict[str, Any]]:
    """``--params JSON``: ``{"COMPONENT": {params}}``; a bare ``{params}`` object applies to
    the only component checked. Returns params by component name."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckUsageError(f"--params: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CheckUsageError("--params: expected a JSON object")
    names = {c.name for c in components}
    if value and all(key in names for key in value):
        for key, params in value.items():
            if not isinstance(params, dict):
                raise CheckUsageError(f"--params: {key}: expected an object of params")
        return value
    if len(names) == 1:
        return {next(iter(names)): value}
    unknown = sorted(set(value) - names)
    raise CheckUsageError(
        f"--params: no component named {', '.join(map(repr, unknown))} is checked; give "
        '{"COMPONENT": {params}, ...} with names from: ' + ", ".join(sorted(names))
    )


def _pipeline(
    component: Component, params: Mapping[str, Any], items: list[Any] | None
) -> dict[str, Any] | str:
    """The bounded pipeline that runs ``component`` once on ``items`` (for a transformer
    or a sink); a string says why it cannot."""
    kind = str(component.kind)
    spec: dict[str, Any] = {"name": "check", "timeouts": {"total": RUN_TIMEOUT}}
    if kind == "action":
        spec["sources"] = {"sample": {"action": component.name, "params": dict(params)}}
        spec["sinks"] = [{"sink": "collect"}]
        return spec
    if items is None:
        return f"no sample input to feed the {kind}: give --params"
    feed = {"action": "iterable", "params": {"items": items}}
    spec["sources"] = {"sample": feed}
    if kind == "transformer":
        spec["steps"] = [{"transformer": component.name, "params": dict(params)}]
        spec["sinks"] = [{"sink": "collect"}]
    else:
        spec["sinks"] = [{"sink": component.name, "params": dict(params)}]
    return spec


async def _run_check(
    component: Component, manager: PluginManager, given: Mapping[str, Any] | None
) -> CheckResult:
    """Run the component once with the params given, or its sample params."""
    from ..conformance import CheckResult
    from ..core.api import run

    name, kind = component.name, str(component.kind)
    params = given if given is not None else component.sample_params
    if params is None:
        why = "no sample params (it may have side effects): give --params"
        return CheckResult(name, kind, "run", "skip", why)
    items = component.sample_input
    if items is None and given is not None:
        items = [dict(item) for item in DEFAULT_INPUT]
    spec = _pipeline(component, params, items)
    if isinstance(spec, str):
        return CheckResult(name, kind, "run", "skip", spec)
    try:
        result = await run(spec, plugins=manager, raise_on_error=False)
    except Exception as exc:  # an invalid pipeline: bad params, ...
        return CheckResult(name, kind, "run", "fail", f"{type(exc).__name__}: {exc}")
    if str(result.state) != "succeeded":
        errors = "; ".join(str(e) for e in result.errors) or str(result.state)
        return CheckResult(name, kind, "run", "fail", f"the run ended {result.state}: {errors}")
    if kind == "sink":
        detail = f"wrote {_items(len(items or []))}"
    else:
        output = result.output if isinstance(result.output, list) else []
        detail = f"{_items(len(output))} out"
    return CheckResult(name, kind, "run", "pass", detail)


def _items(count: int) -> str:
    return f"{count} item{'s' if count != 1 else ''}"


def check_components(
    manager: PluginManager,
    components: Sequence[Component],
    params: Mapping[str, dict[str, Any]],
) -> list[ComponentReport]:
    """The conformance checks, then the sample run, of each component.

    They run with an empty standard input and their standard output captured, so that a
    source reading stdin or a sink writing stdout neither waits on nor garbles the report.
    """
    import contextlib
    import io
    import sys

    import anyio

    from ..conformance import CheckResult, check_component_async

    async def main() -> list[ComponentReport]:
        reports: list[ComponentReport] = []
        for component in components:
            given = params.get(component.name)
            sample = given if given is not None else component.sample_params
            results = list(await check_component_async(component, params=sample))
            if str(component.kind) in RUNNABLE_KINDS:
                try:
                    results.append(await _run_check(component, manager, given))
                except Exception as exc:
                    detail = f"{type(exc).__name__}: {exc}"
                    results.append(
                        CheckResult(component.name, str(component.kind), "run", "fail", detail)
                    )
            reports.append(ComponentReport(component, results))
        return reports

    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return anyio.run(main)
    finally:
        sys.stdin = saved


def summary(reports: Sequence[ComponentReport]) -> dict[str, int]:
    """``{"checked": N, "skipped": M, "failed": K}`` over the components."""
    counts = {"checked": 0, "skipped": 0, "failed": 0}
    for report in reports:
        counts[report.verdict] += 1
    return counts
