"""``headwater plugins`` (and ``--check``), ``describe`` and ``new-plugin``."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    KINDS,
    CLIError,
    _consoles,
    _error,
    _plain_text,
    _plugin_manager,
    _print_json,
    _strict,
    _verbosity,
)

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from ..core.components import Component
    from ..core.plugins import PluginManager


def _add_plugins_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``plugins`` sub-command."""
    plugins = commands.add_parser(
        "plugins",
        parents=[common],
        help="list plugins, their components and load errors",
        description="List the installed plugins (loaded and disabled), the components "
        "they contribute and the plugins that failed to load.",
    )
    plugins.add_argument(
        "--json",
        action="store_true",
        help='print {"plugins": [...], "components": [...], "failures": [...]}',
    )
    plugins.add_argument(
        "--check",
        nargs="?",
        const="",
        default=None,
        metavar="PLUGIN",
        help="check the components of PLUGIN (a plugin or distribution name; default: "
        "every installed one): the conformance checks, then a run of each action, "
        "transformer and sink with the sample params and input of its metadata "
        "(components without samples are skipped, with the reason, unless given --params); "
        "one row per component, every check with -v; exit 1 if one fails; with --json "
        'print {"results": [...], "summary": {...}}',
    )
    plugins.add_argument(
        "--params",
        metavar="JSON",
        help='with --check: params to run components with, {"COMPONENT": {...}}, or just '
        "{...} when PLUGIN has one component",
    )
    plugins.set_defaults(func=_cmd_plugins)


def _add_describe_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``describe`` sub-command."""
    describe = commands.add_parser(
        "describe",
        parents=[common],
        help="show one component's metadata and params",
        description="Show a component's metadata and the JSON Schema of its params.",
    )
    describe.add_argument("name", metavar="NAME", help="component name, e.g. range")
    describe.add_argument("--kind", choices=KINDS, help="only look among this kind")
    describe.add_argument("--json", action="store_true", help="print the metadata as JSON")
    describe.set_defaults(func=_cmd_describe)


def _add_new_plugin_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``new-plugin`` sub-command."""
    new_plugin = commands.add_parser(
        "new-plugin",
        parents=[common],
        help="create a plugin package, ready to pip install and test",
        description="Create a plugin distribution: pyproject.toml with the headwater entry "
        "point, a sample action with a params model, and tests using the headwater.testing "
        "fixtures. They pass right after: pip install -e 'DIR[test]' && pytest DIR",
    )
    new_plugin.add_argument("name", metavar="NAME", help="distribution name, e.g. acme-weather")
    new_plugin.add_argument(
        "--dir",
        metavar="PATH",
        help="directory to create (default: ./NAME); it may exist if it is empty",
    )
    new_plugin.set_defaults(func=_cmd_new_plugin)


# ---------------------------------------------------------------------------------------
# headwater plugins
# ---------------------------------------------------------------------------------------


def _metadata(component: Component) -> dict[str, Any]:
    """``component.metadata()``; a params model without a JSON Schema does not break it."""
    import dataclasses

    try:
        return component.metadata()
    except Exception as exc:  # e.g. a params field of a type pydantic cannot describe
        meta = dataclasses.replace(component, params=None).metadata()
        meta["params_schema"] = None
        meta["params_schema_error"] = f"{type(exc).__name__}: {exc}"
        return meta


def _cmd_plugins(args: argparse.Namespace) -> int:
    """List plugins. JSON structure (stable)::

    {"plugins": [{"name", "distribution", "version", "module", "components": ["kind:name"],
                  "disabled": bool}],
     "components": [{"name", "kind", "plugin", "distribution", "version", "description",
                     "output", "capabilities", "params_schema", ...}],
     "failures": [{"plugin", "distribution", "version", "stage", "error"}]}
    """
    # Load everything even in strict mode so the listing is complete; strictness decides
    # the exit code instead.
    manager = _plugin_manager(args, strict=False)
    failures = manager.failures
    strict = _strict(args)
    if getattr(args, "check", None) is not None:
        return _check_plugins(args, manager)
    if getattr(args, "params", None) is not None:
        raise CLIError("--params goes with --check")
    if args.json:
        plugins = sorted(manager.plugins.values(), key=lambda p: p.name)
        _print_json(
            {
                "plugins": [p.to_dict() for p in plugins],
                "components": [_metadata(c) for c in manager.registry],
                "failures": [f.to_dict() for f in failures],
            }
        )
        return EXIT_USAGE if strict and failures else EXIT_OK

    _print_plugins(_consoles()[0], manager, verbose=_verbosity(args) > 0)
    if strict and failures:
        _error("a plugin failed to load and strict plugin loading is on")
        return EXIT_USAGE
    return EXIT_OK


def _check_plugins(args: argparse.Namespace, manager: PluginManager) -> int:
    """``headwater plugins --check [PLUGIN]``: conformance checks and sample runs."""
    from rich.table import Table
    from rich.text import Text

    from .plugin_check import (
        CheckUsageError,
        check_components,
        load_failures,
        parse_params,
        summary,
    )

    try:
        components = select_components_or_all(manager, args.check or None)
        params = parse_params(args.params, components)
    except CheckUsageError as exc:
        raise CLIError(str(exc)) from None
    reports = check_components(manager, components, params)
    counts = summary(reports)
    broken = load_failures(manager, args.check or None)
    counts["failed"] += len(broken)
    if args.json:
        results = [r.to_dict() for report in reports for r in report.results]
        _print_json(
            {
                "results": results,
                "load_failures": [f.to_dict() for f in broken],
                "summary": counts,
                "failed": counts["failed"],
            }
        )
        return EXIT_FAILED if counts["failed"] else EXIT_OK
    out = _consoles()[0]
    if _verbosity(args) > 0:  # every check of every component
        styles = {"pass": "green", "fail": "bold red", "skip": "yellow", "n/a": "dim"}
        table = Table("component", "check", "result", "detail", show_edge=False)
        for report in reports:
            for r in report.results:
                table.add_row(
                    f"{r.kind} {r.component}",
                    r.check,
                    Text(r.status, style=styles[r.status]),
                    Text(r.detail, style="red" if r.status == "fail" else ""),
                )
    else:  # one row per component: the checks passed, and why others failed or skipped
        styles = {"checked": "green", "failed": "bold red", "skipped": "yellow"}
        table = Table("component", "result", "detail", show_edge=False)
        for report in reports:
            passed = [r.check for r in report.results if r.status == "pass"]
            grouped: dict[tuple[str, str], list[str]] = {}  # checks by (status, detail)
            for r in report.results:
                if r.status in ("fail", "skip"):
                    grouped.setdefault((r.status, r.detail), []).append(r.check)
            notes = [
                f"{', '.join(c)} {status}: {detail}" for (status, detail), c in grouped.items()
            ]
            if passed:
                ran = [r.detail for r in report.results if r.check == "run" and r.status == "pass"]
                notes.insert(0, "passed " + ", ".join(passed) + "".join(f" ({d})" for d in ran))
            table.add_row(
                f"{report.component.kind} {report.component.name}",
                Text(report.verdict, style=styles[report.verdict]),
                Text("; ".join(notes)),
            )
    for failure in broken:  # a component of a checked plugin that cannot even be loaded
        where = [f"plugin {failure.plugin}"] + (["load"] if _verbosity(args) > 0 else [])
        detail = Text(f"failed to load ({failure.stage}): {failure.error}", style="red")
        table.add_row(*where, Text("failed", style="bold red"), detail)
    out.print(table)
    line = ", ".join(f"{verdict} {n}" for verdict, n in counts.items())
    out.print(Text(line, style="bold"), soft_wrap=True)
    if counts["failed"]:
        failed = counts["failed"]
        _error(
            f"{failed} component{'s' if failed != 1 else ''} failed a conformance check or its run"
        )
        return EXIT_FAILED
    return EXIT_OK


def select_components_or_all(manager: PluginManager, plugin: str | None) -> list[Component]:
    """The loaded components of ``plugin`` (or every one), for ``--check``."""
    from .plugin_check import select_components

    return select_components(manager.load(), plugin)


def _print_plugins(out: Console, manager: PluginManager, *, verbose: bool) -> None:
    """Human listing: each plugin with its components, then disabled ones, then failures."""
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    components = list(manager.registry)  # imports the lazily registered ones: failures first
    plugins = sorted(manager.plugins.values(), key=lambda p: p.name)
    loaded = [p for p in plugins if not p.disabled]
    disabled = [p for p in plugins if p.disabled]
    failures = manager.failures
    n_comp = len(components)
    out.print(
        Text(
            f"{len(loaded)} plugin{'s' if len(loaded) != 1 else ''} loaded "
            f"({n_comp} component{'s' if n_comp != 1 else ''}), {len(disabled)} disabled, "
            f"{len(failures)} failed to load",
            style="bold",
        )
    )

    max_name = max((len(c.name) for c in components), default=0)

    def origin(dist: str | None, version: str | None) -> str:
        return f"{dist} {version or ''}".rstrip() if dist else "(not from a distribution)"

    for plugin in loaded:
        out.print()
        out.print(
            Text.assemble(
                (plugin.name, "bold"), "  ", (origin(plugin.distribution, plugin.version), "dim")
            )
        )
        refs = [ref.partition(":")[::2] for ref in plugin.components]
        width_kind = max((len(k) for k, _ in refs), default=0)
        room = max(20, out.width - 2 - width_kind - 2 - max_name - 2)
        table = Table.grid(padding=(0, 2))
        table.add_column(no_wrap=True)
        table.add_column(no_wrap=True, style="cyan", min_width=max_name)
        table.add_column(no_wrap=True)
        for kind, name in refs:
            try:
                description = Text(_plain_text(manager.registry.get(kind, name).description))
            except LookupError:
                description = Text("could not be loaded (see LOAD ERRORS)", style="red")
            description.truncate(room, overflow="ellipsis")
            table.add_row(kind, Text(name), description)
        if not refs:
            table.add_row(Text("(no components)", style="dim"), "", "")
        out.print(Padding(table, (0, 0, 0, 2), expand=False))
    if disabled:
        out.print()
        out.print(Text("disabled", style="bold"))
        for plugin in disabled:
            out.print(Text(f"  {plugin.name}  {origin(plugin.distribution, plugin.version)}"))
    if failures:
        out.print()
        out.print(Text("LOAD ERRORS", style="bold red"))
        for failure in failures:
            out.print(Text(f"  {failure}", style="red"), soft_wrap=True)
            if verbose and failure.traceback:
                out.print(Text(failure.traceback.rstrip()), soft_wrap=True)
    out.print()
    out.print(Text("headwater describe NAME shows a component's params", style="dim"))


# ---------------------------------------------------------------------------------------
# headwater describe
# ---------------------------------------------------------------------------------------


def _suggest(name: str, candidates: Iterable[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, sorted(set(candidates)), n=3, cutoff=0.6)


def _cmd_describe(args: argparse.Namespace) -> int:
    """``headwater describe``: one component's metadata and params schema."""
    manager = _plugin_manager(args)
    registry = manager.registry
    found = registry.find(args.name)
    if args.kind:
        found = [c for c in found if str(c.kind) == args.kind]
    if not found:
        kinds = [args.kind] if args.kind else list(KINDS)
        for kind in kinds:
            if args.name in registry.names(kind):  # registered, but it cannot be loaded
                try:
                    registry.get(kind, args.name)
                except LookupError as exc:
                    raise CLIError(str(exc)) from None
        names = [n for k in kinds for n in registry.names(k)]
        message = f"no {args.kind or 'component'} named {args.name!r}"
        elsewhere = [str(c.kind) for c in registry.find(args.name)]
        if elsewhere:
            kinds_found = " and ".join(f"a{'n' * (k[0] in 'ae')} {k}" for k in elsewhere)
            message += f"; {args.name!r} is {kinds_found}"
        suggestions = _suggest(args.name, names)
        if suggestions:
            message += f"; did you mean {' or '.join(repr(s) for s in suggestions)}?"
        elif not elsewhere:
            message += " (headwater plugins lists every component)"
        raise CLIError(message)
    if args.json:
        if len(found) > 1:
            several = ", ".join(str(c.kind) for c in found)
            raise CLIError(f"{args.name!r} names several components ({several}); pass --kind")
        _print_json(_metadata(found[0]))
        return EXIT_OK
    out, _ = _consoles()
    for i, component in enumerate(found):
        if i:
            out.print()
        _print_component(out, component)
    return EXIT_OK


def _schema_type(prop: Mapping[str, Any]) -> str:
    if "type" in prop:
        kind = prop["type"]
        if kind == "array" and isinstance(prop.get("items"), Mapping):
            return f"array of {_schema_type(prop['items'])}"
        return " | ".join(kind) if isinstance(kind, list) else str(kind)
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " | ".join(_schema_type(p) for p in prop[key])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "enum" in prop:
        return " | ".join(repr(v) for v in prop["enum"])
    if "const" in prop:
        return repr(prop["const"])
    return "any"


def _print_component(out: Console, component: Component) -> None:
    """Human description: metadata, a table of params, then the params JSON Schema."""
    import json
    import textwrap

    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    def indented(renderable: RenderableType) -> Padding:
        return Padding(renderable, (0, 0, 0, 2), expand=False)

    meta = _metadata(component)
    out.print(Text.assemble((meta["name"], "bold"), f"  ({meta['kind']})"))
    if meta["description"]:
        out.print(indented(Text(_plain_text(meta["description"]))))
    info = Table.grid(padding=(0, 2))
    info.add_column(style="dim", no_wrap=True)
    info.add_column(overflow="fold")
    origin = meta["plugin"] or "-"
    if meta["distribution"]:
        origin += f" ({meta['distribution']} {meta['version'] or ''}".rstrip() + ")"
    rows: list[tuple[str, str]] = [("plugin", origin)]
    if meta.get("output"):
        rows.append(("output", _plain_text(meta["output"])))
    rows.append(("capabilities", ", ".join(meta["capabilities"]) or "-"))
    if meta.get("transformer_kind"):
        rows.append(("transformer kind", meta["transformer_kind"]))
    if meta.get("delivery"):
        rows.append(("delivery", meta["delivery"]))
    for key, value in rows:
        info.add_row(key, Text(value))
    out.print(indented(info))
    out.print()
    schema = meta.get("params_schema")
    if schema is None:
        out.print(Text(f"params schema unavailable: {meta.get('params_schema_error')}"))
        return
    props: Mapping[str, Any] = schema.get("properties") or {}
    required = set(schema.get("required") or ())
    if not props:
        out.print(Text("params: none"))
        return
    out.print(Text("params", style="bold"))
    table = Table.grid(padding=(0, 2))
    table.add_column(style="cyan", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    table.add_column(overflow="fold")
    for pname, prop in props.items():
        if pname in required:
            default = Text("required", style="bold")
        elif "default" in prop:
            default = Text(f"default {json.dumps(prop['default'])}")
        else:
            default = Text("optional")
        table.add_row(
            Text(pname),
            Text(_schema_type(prop)),
            default,
            Text(_plain_text(str(prop.get("description", "")))),
        )
    out.print(indented(table))
    out.print()
    out.print(Text("params JSON schema", style="bold"))
    out.print(Text(textwrap.indent(json.dumps(schema, indent=2), "  ")), soft_wrap=True)


# ---------------------------------------------------------------------------------------
# headwater new-plugin
# ---------------------------------------------------------------------------------------


def _cmd_new_plugin(args: argparse.Namespace) -> int:
    """``headwater new-plugin``: scaffold a plugin distribution; print what to do next."""
    import shlex

    from ..scaffold import ScaffoldError, create_plugin

    try:
        made = create_plugin(args.name, args.dir)
    except ScaffoldError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot create the plugin: {exc}") from None
    root = made.root.as_posix()
    if not made.root.is_absolute() and not root.startswith("."):
        root = f"./{root}"  # pip reads a bare name as a requirement, ./NAME as the folder
    where = shlex.quote(root)
    print(f"created plugin {made.names.distribution!r} in {made.root}:")
    for path in made.files:
        print(f"  {path.as_posix()}")
    print(
        "next:\n"
        f"  python -m pip install -e {shlex.quote(f'{root}[test]')}\n"
        f"  python -m pytest {where}\n"
        f"  headwater plugins                 # lists {made.names.package}\n"
        f"  headwater describe {made.action}\n"
        f"  headwater plugins --check {made.names.distribution}"
    )
    return EXIT_OK
