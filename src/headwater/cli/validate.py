"""``headwater validate``: check a pipeline file, show it resolved, check its connections.

``--print`` shows the pipeline as a run would use it: after ``--set`` overrides and
``${VAR}`` substitution, with every default filled in, the params of each component as
its params model holds them; substituted values are masked (they are the command's
secrets). ``--check-connections`` opens and closes each source and sink without moving
data, for the components that offer a check: a ``check`` attribute of the declared
object (a function's attribute, or a sink class's static or class method), called as
``check(params, ctx)`` (or ``check(ctx)`` without a params model), sync or async,
returning None or a short description of what it reached and raising when it cannot.
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
    from ..core.engine import Engine
    from ..core.pipeline import PipelineSpec, ResolvedPipeline, ResolvedStage

CHECK_TIMEOUT = 15.0
"""Seconds one component's check may take before it counts as failed."""


def _add_validate_command(commands: Any, common: argparse.ArgumentParser) -> None:
    """The ``validate`` sub-command."""
    validate = commands.add_parser(
        "validate",
        parents=[common],
        help="check a pipeline file: its shape, its components and their params",
        description="Validate a pipeline YAML file against the pipeline schema and the "
        "installed components; print OK or every problem with its path. --print shows the "
        "pipeline resolved (overrides, substitution, defaults; secrets masked); "
        "--check-connections opens and closes each source and sink that offers a check, "
        "without moving data (exit 1 if one fails).",
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
        help="open and close each source and sink that offers a check (others are "
        "reported as not checked)",
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


def _check_connections(
    args: argparse.Namespace, spec: PipelineSpec, resolved: ResolvedPipeline
) -> int:
    """Call each source's and sink's check; print one line each; exit 1 if one failed."""
    import anyio

    engine = _engine(args, spec.plugins.disable)
    stages: list[ResolvedStage] = [*resolved.sources.values(), *resolved.sinks]
    if resolved.dead_letter is not None:
        stages.append(resolved.dead_letter)
    results = anyio.run(_run_checks, engine, spec.name, stages)
    secrets = _secrets(args)
    width = max(len(stage.stage) for stage in stages)
    failed = 0
    for stage, (outcome, detail) in zip(stages, results, strict=True):
        failed += outcome == "failed"
        text = f"  {stage.stage:<{width}}  {outcome}" + (f": {detail}" if detail else "")
        print(secrets.mask(text))
    return EXIT_FAILED if failed else EXIT_OK


async def _run_checks(
    engine: Engine, pipeline: str, stages: list[ResolvedStage]
) -> list[tuple[str, str]]:
    import anyio

    from ..core.context import RunIdentity, StreamContext
    from ..core.invoke import maybe_await_in_thread, params_and_ctx, positional_arity

    identity = RunIdentity(pipeline, "check")
    results: list[tuple[str, str]] = []
    for stage in stages:
        check = getattr(stage.component.obj, "check", None)
        if not callable(check):
            results.append(
                ("not checked", f"{stage.component.kind} {stage.component.name!r} offers no check")
            )
            continue
        ctx = StreamContext(identity, stage.stage, stage.component.plugin, services=engine.services)
        lead = params_and_ctx(stage.params, ctx)
        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                said = await maybe_await_in_thread(check, *lead[: positional_arity(check)])
        except TimeoutError:
            results.append(("failed", f"no answer within {CHECK_TIMEOUT:g}s"))
        except Exception as exc:
            results.append(("failed", f"{type(exc).__name__}: {exc}"))
        else:
            results.append(("ok", str(said) if said else ""))
    return results
