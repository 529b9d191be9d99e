"""``headwater validate``: check a pipeline file, show it resolved, check its connections.

``--print`` shows the pipeline as a run would use it: after ``--set`` overrides and
``${VAR}`` substitution, with every default filled in, the params of each component as
its params model holds them; substituted values are masked (they are the command's
secrets). ``--check-connections`` opens and closes the connection of each source, sink,
step and checkpoint store without moving data, for the components that declare a check
(``check=`` in their decorator; see :mod:`headwater.core.connection_checks`): one line
each, OK, FAILED (with what is wrong), skipped (nothing to reach) or no check; exit
status 1 when one failed.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CLIError,
    _add_overrides,
    _add_sandbox_options,
    _engine,
    _load_spec,
    _plugin_manager,
    _prepare,
    _print_json,
    _secrets,
)

if TYPE_CHECKING:
    from ..core.pipeline import PipelineSpec, ResolvedPipeline, ResolvedStage


def _add_validate_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``validate`` sub-command."""
    validate = commands.add_parser(
        "validate",
        parents=[common],
        help="check a pipeline file: its shape, its components and their params",
        description="Validate a pipeline YAML file against the pipeline schema and the "
        "installed components; print OK or every problem with its path. --print shows the "
        "pipeline resolved (overrides, substitution, defaults; secrets masked); "
        "--check-connections opens and closes the connection of each source, sink, step "
        "and checkpoint store that declares a check, without moving data (exit 1 if one "
        "fails).",
    )
    validate.add_argument("file", metavar="FILE", help="pipeline YAML file")
    _add_overrides(validate)
    _add_sandbox_options(validate)
    validate.add_argument(
        "--print",
        dest="print_resolved",
        action="store_true",
        help="print the resolved pipeline as YAML on stdout (with --json: as JSON)",
    )
    validate.add_argument("--json", action="store_true", help="with --print: JSON instead of YAML")
    validate.add_argument(
        "--check-connections",
        action="store_true",
        help="open and close the connection of each source, sink, step and checkpoint "
        "store that declares a check, without moving data (the others: 'no check')",
    )
    validate.add_argument(
        "--timeout",
        type=_timeout,
        default=None,
        metavar="SECONDS",
        help="with --check-connections: seconds each check may take (default: 10)",
    )
    validate.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    """``headwater validate``: check shape, components and params; print OK."""
    from .run import _is_jobs_path

    if _is_jobs_path(args.file):
        from ..core.jobs import validate_jobs

        if args.overrides:
            raise CLIError("--set applies to pipeline files, not to jobs files")
        if args.print_resolved or args.check_connections:
            raise CLIError("--print and --check-connections apply to pipeline files")
        jobs = validate_jobs(args.file, plugins=_plugin_manager(args), secrets=_secrets(args))
        n = len(jobs.jobs)
        print(f"OK: jobs file {args.file} is valid ({n} job{'s' if n != 1 else ''})")
        return EXIT_OK
    if args.json and not args.print_resolved:
        raise CLIError("--json goes with --print")
    if args.timeout is not None and not args.check_connections:
        raise CLIError("--timeout goes with --check-connections")
    spec = _load_spec(args)
    resolved, _ = _prepare(args, spec)
    secrets = _secrets(args)
    if args.print_resolved:
        document = secrets.mask_data(resolved_document(resolved))
        if args.json:
            _print_json(document)
        else:
            import yaml

            print(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), end="")
    n_src, n_steps, n_sinks = len(resolved.sources), len(resolved.steps), len(resolved.sinks)
    compose = f", {spec.compose.mode}d" if spec.compose and n_src > 1 else ""
    ok = (
        f"OK: pipeline {spec.name!r} in {args.file} is valid "
        f"({n_src} source{'s' if n_src != 1 else ''}{compose}, "
        f"{n_steps} step{'s' if n_steps != 1 else ''}, "
        f"{n_sinks} sink{'s' if n_sinks != 1 else ''})"
    )
    if args.print_resolved:
        import sys

        sys.stderr.write(secrets.mask(ok) + "\n")
    else:
        print(secrets.mask(ok))
    if args.check_connections:
        return _check_connections(args, spec, resolved)
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# --print
# ---------------------------------------------------------------------------------------


def _params_of(stage: ResolvedStage | None) -> Any:
    """A stage's params as its model holds them (defaults included), JSON-safe."""
    from ._common import _json_safe

    if stage is None or stage.params is None:
        return {}
    try:
        return stage.params.model_dump(mode="json")
    except Exception:  # a field pydantic cannot serialise (a callable): shown by repr
        return _json_safe(stage.params.model_dump(mode="python"))


def resolved_document(resolved: ResolvedPipeline) -> dict[str, Any]:
    """The pipeline as a run uses it: the file's model with defaults, and each
    component's params as validated (defaults filled in). Not masked."""
    from ._common import _json_safe

    spec = resolved.spec
    try:
        doc: dict[str, Any] = spec.model_dump(mode="json", exclude={"tests"})
    except Exception:  # params given as Python objects (embedding): shown by repr
        doc = _json_safe(spec.model_dump(mode="python", exclude={"tests"}))
    for name, source in doc.get("sources", {}).items():
        source["params"] = _params_of(resolved.sources.get(name))
    for i, step in enumerate(doc.get("steps", [])):
        if i < len(resolved.steps):
            step["params"] = _params_of(resolved.steps[i])
    for i, sink in enumerate(doc.get("sinks", [])):
        if i < len(resolved.sinks):
            sink["params"] = _params_of(resolved.sinks[i])
    if resolved.dead_letter is not None and isinstance(doc.get("dead_letter"), Mapping):
        doc["dead_letter"]["params"] = _params_of(resolved.dead_letter)
    if spec.tests:
        doc["tests"] = f"{len(spec.tests)} test case(s): headwater test runs them"
    return doc


# ---------------------------------------------------------------------------------------
# --check-connections
# ---------------------------------------------------------------------------------------

_LABELS = {"ok": "OK", "failed": "FAILED", "skipped": "skipped", "no check": "no check"}


def _check_connections(
    args: argparse.Namespace, spec: PipelineSpec, resolved: ResolvedPipeline
) -> int:
    """Run each stage's connection check; print one line each and a summary; exit 1 if
    one failed."""
    import anyio

    from ..core.connection_checks import DEFAULT_TIMEOUT, check_pipeline

    timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    engine = _engine(args, spec.plugins.disable)
    outcomes = anyio.run(lambda: check_pipeline(engine, resolved, per_check=timeout))
    secrets = _secrets(args)
    names = [_shown_stage(o.stage, o.component) for o in outcomes]
    width = max((len(n) for n in names), default=0)
    counts: dict[str, int] = {}
    for name, o in zip(names, outcomes, strict=True):
        label = _LABELS[o.outcome]
        counts[label] = counts.get(label, 0) + 1
        text = f"  {name:<{width}}  {label}" + (f": {o.detail}" if o.detail else "")
        print(secrets.mask(text))
    summary = ", ".join(f"{counts[label]} {label}" for label in _LABELS.values() if label in counts)
    print(f"connections: {summary or 'nothing to check'}")
    return EXIT_FAILED if counts.get("FAILED") else EXIT_OK


def _shown_stage(stage: str, component: str) -> str:
    """``sources.events (redis.stream)``; a stage named after its component as it is."""
    return stage if stage.endswith(f".{component}") else f"{stage} ({component})"


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds <= 3600:
        raise argparse.ArgumentTypeError(f"a timeout is between 0 and 3600 seconds, got {value}")
    return seconds
