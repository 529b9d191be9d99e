"""Run the test cases of a pipeline file (``headwater test``).

A case (:class:`~headwater.core.testcases.PipelineTestCase`) comes from the file's
``tests:`` key or from ``NAME.tests.yaml`` beside ``NAME.yaml``. Each one runs a copy of
the pipeline in which:

* the sources are replaced by the case's ``input`` items (an ``iterable`` action per
  source; ``compose`` stays, so that merges and joins are tested too), or, with
  ``stage``, the items go straight to that step (the steps before it are left out) or
  that sink (every step left out);
* every sink is replaced by a ``collect`` sink of the same name, keeping its ``where``
  and its own ``steps`` (nothing reaches a real destination), and so is the dead-letter
  sink;
* ``checkpoint`` is dropped, and the case's ``set`` overrides are applied first.

Then the run's state and what each sink collected are compared with ``expect``. Every
difference is reported: items as a unified diff of their JSON lines, counts, and the
first items for which a condition (a safe expression, :mod:`headwater.core.expr`) does
not hold. The runtime never reads ``tests:``.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PipelineValidationError, ValidationIssue
from .pipeline import apply_override, parse_pipeline
from .testcases import CountSpec, Expectation, PipelineTestCase

if TYPE_CHECKING:
    from .engine import Engine
    from .runtime import RunResult
    from .secrets import Secrets

__all__ = ["CaseOutcome", "TestFile", "load_test_file", "run_case", "tests_file_for"]

_SHOWN_FAILURES = 3
"""Items named per failed condition; the rest are counted."""

_DIFF_LINES = 40
"""Lines of a diff shown; the rest are counted."""


@dataclass(slots=True)
class TestFile:
    """A pipeline file and its test cases (from its ``tests:`` or a tests file)."""

    pipeline: Path
    data: dict[str, Any]
    """The pipeline mapping, substituted, without ``tests``."""
    cases: list[PipelineTestCase]
    source: Path
    """Where the cases were read: the pipeline file or ``NAME.tests.yaml``."""


@dataclass(slots=True)
class CaseOutcome:
    """The result of one case: passed, or the problems found."""

    name: str
    problems: list[str] = field(default_factory=list)
    state: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.problems


def tests_file_for(pipeline: Path) -> Path:
    """``NAME.tests.yaml`` beside ``NAME.yaml`` (or ``NAME.yml``)."""
    return pipeline.with_name(f"{pipeline.stem}.tests.yaml")


def _pipeline_for(tests_file: Path) -> Path:
    """The pipeline file a ``NAME.tests.yaml`` belongs to."""
    stem = tests_file.name.removesuffix(".tests.yaml").removesuffix(".tests.yml")
    for suffix in (".yaml", ".yml"):
        candidate = tests_file.with_name(stem + suffix)
        if candidate.exists():
            return candidate
    raise PipelineValidationError(
        [ValidationIssue("", f"no pipeline file {stem}.yaml beside it")], str(tests_file)
    )


def load_test_file(path: str | Path, secrets: Secrets | None = None) -> TestFile:
    """Read a pipeline file and its test cases; ``path`` may also be ``NAME.tests.yaml``.

    The cases of the pipeline's ``tests:`` come first, then those of the tests file.
    Raises :class:`PipelineValidationError` naming the file and every problem (also when
    there is no test case at all).
    """
    from .yamlfile import load_yaml_file

    path = Path(path)
    if path.name.endswith((".tests.yaml", ".tests.yml")):
        path = _pipeline_for(path)
    data = load_yaml_file(path, PipelineValidationError, secrets=secrets)
    spec = parse_pipeline(data, source=str(path))  # the shape, tests included
    cases = list(spec.tests)
    source = path
    extra = tests_file_for(path)
    if extra.exists():
        more = load_yaml_file(extra, PipelineValidationError, secrets=secrets)
        if isinstance(more, Mapping):
            more = more.get("tests")
        if not isinstance(more, list):
            raise PipelineValidationError(
                [ValidationIssue("tests", "a tests file holds tests: [...] or a list of cases")],
                str(extra),
            )
        try:
            holder = parse_pipeline({**data, "tests": more}, source=str(extra))
        except PipelineValidationError as exc:
            issues = [i for i in exc.issues if i.path.startswith("tests")]
            raise PipelineValidationError(issues or exc.issues, str(extra)) from None
        cases += holder.tests
        source = extra
    if not cases:
        raise PipelineValidationError(
            [
                ValidationIssue(
                    "tests",
                    f"no test cases: add tests: to the file, or write {extra.name} beside it",
                )
            ],
            str(path),
        )
    names = [c.name for c in cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PipelineValidationError(
            [ValidationIssue("tests", f"duplicate test names: {', '.join(twice)}")], str(source)
        )
    body = {k: v for k, v in dict(data).items() if k != "tests"}
    return TestFile(path, body, cases, source)


# ---------------------------------------------------------------------------------------
# The pipeline of a case
# ---------------------------------------------------------------------------------------


def _sink_key(sinks: list[Mapping[str, Any]], index: int) -> str:
    """The name a run gives sink ``index`` (as :func:`~headwater.core.pipeline.resolve`)."""
    seen: set[str] = set()
    key = ""
    for i, sink in enumerate(sinks[: index + 1]):
        key = str(sink.get("name") or sink.get("sink"))
        if key in seen and sink.get("name") is None:
            key = f"{key}[{i}]"
        seen.add(key)
    return key


def _step_index(steps: list[Mapping[str, Any]], stage: str) -> int | None:
    for i, step in enumerate(steps):
        names = {f"steps[{i}]", f"steps.{i}", f"steps[{i}].{step.get('transformer')}"}
        if step.get("name"):
            names.add(str(step["name"]))
        if stage in names:
            return i
    return None


def case_pipeline(data: Mapping[str, Any], case: PipelineTestCase) -> dict[str, Any]:
    """The pipeline mapping a case runs (see the module docstring). Raises
    :class:`PipelineValidationError` for an input or stage that does not fit it."""
    out = copy.deepcopy(dict(data))
    for key, value in case.set.items():
        apply_override(out, key, value)
    out.pop("checkpoint", None)
    sinks = list(out.get("sinks") or [])
    for i, sink in enumerate(sinks):
        if isinstance(sink, Mapping):
            sinks[i] = {**sink, "sink": "collect", "params": {}, "name": _sink_key(sinks, i)}
    out["sinks"] = sinks
    if out.get("dead_letter") is not None:
        out["dead_letter"] = {"sink": "collect"}
    where = f"tests[{case.name!r}]"
    sources = dict(out.get("sources") or {})
    if case.stage is None:
        if isinstance(case.input, list):
            if len(sources) != 1:
                names = ", ".join(sources)
                raise PipelineValidationError(
                    [
                        ValidationIssue(
                            f"{where}.input",
                            f"the pipeline has {len(sources)} sources ({names}): give the "
                            "items per source, {SOURCE: [...]}",
                        )
                    ]
                )
            feeds = {next(iter(sources)): case.input}
        else:
            unknown = sorted(set(case.input) - set(sources))
            if unknown:
                raise PipelineValidationError(
                    [
                        ValidationIssue(
                            f"{where}.input",
                            f"no source {', '.join(map(repr, unknown))}; sources are "
                            f"{', '.join(map(repr, sources))}",
                        )
                    ]
                )
            feeds = {name: case.input.get(name, []) for name in sources}
        out["sources"] = {
            name: {"action": "iterable", "params": {"items": items}}
            for name, items in feeds.items()
        }
        return out
    if not isinstance(case.input, list):
        raise PipelineValidationError(
            [ValidationIssue(f"{where}.input", "with stage, input is one list of items")]
        )
    steps = list(out.get("steps") or [])
    index = _step_index(steps, case.stage)
    sink_names = {f"sinks.{_sink_key(sinks, i)}" for i in range(len(sinks))}
    if index is not None:
        out["steps"] = steps[index:]
    elif case.stage in sink_names or f"sinks.{case.stage}" in sink_names:
        wanted = case.stage.removeprefix("sinks.")
        out["steps"] = []
        out["sinks"] = [s for i, s in enumerate(sinks) if _sink_key(sinks, i) == wanted]
    else:
        known = [
            f"steps[{i}]" + (f" ({s['name']})" if s.get("name") else "")
            for i, s in enumerate(steps)
        ]
        raise PipelineValidationError(
            [
                ValidationIssue(
                    f"{where}.stage",
                    f"no step or sink {case.stage!r}; steps: {', '.join(known) or 'none'}; "
                    f"sinks: {', '.join(sorted(sink_names))}",
                )
            ]
        )
    out.pop("compose", None)
    out["sources"] = {"input": {"action": "iterable", "params": {"items": case.input}}}
    return out


# ---------------------------------------------------------------------------------------
# Running and comparing
# ---------------------------------------------------------------------------------------


async def run_case(engine: Engine, test_file: TestFile, case: PipelineTestCase) -> CaseOutcome:
    """Run one case on ``engine``; its outcome. Raises :class:`PipelineValidationError`
    when the case's pipeline does not validate (a case that cannot run)."""
    data = case_pipeline(test_file.data, case)
    try:
        result: RunResult = await engine.run(data, raise_on_error=False)
    except PipelineValidationError as exc:
        where = f"tests[{case.name!r}]"
        issues = [ValidationIssue(f"{where} {i.path}".strip(), i.message) for i in exc.issues]
        raise PipelineValidationError(issues, str(test_file.source)) from None
    outcome = CaseOutcome(case.name, state=result.state)
    # every sink of the case, also those a failed run closed without an output
    names = [str(s["name"]) for s in data["sinks"]]
    if data.get("dead_letter") is not None:
        names.append("dead_letter")
    outputs = {k: v if isinstance(v := result.outputs.get(k), list) else [] for k in names}
    outcome.counts = {k: len(v) for k, v in outputs.items()}
    error = "; ".join(str(e) for e in result.errors)
    if result.state != case.state:
        said = f": {error}" if error else ""
        outcome.problems.append(f"the run {result.state}, expected {case.state}{said}")
    elif case.error is not None and case.error not in error:
        outcome.problems.append(f"the run's error does not contain {case.error!r}: {error}")
    first = next(iter(outputs), None)
    for expectation in case.expectations():
        target = expectation.sink or first
        if target not in outputs:
            outcome.problems.append(f"no sink {target!r} (sinks: {', '.join(outputs)})")
            continue
        outcome.problems += _compare(target, outputs[target], expectation)
    return outcome


def _line(item: Any) -> str:
    return json.dumps(item, sort_keys=True, ensure_ascii=False, default=repr)


def _diff(expected: list[Any], received: list[Any]) -> list[str]:
    lines = list(
        difflib.unified_diff(
            [_line(i) for i in expected],
            [_line(i) for i in received],
            "expected",
            "received",
            lineterm="",
        )
    )
    if len(lines) > _DIFF_LINES:
        lines = [*lines[:_DIFF_LINES], f"... {len(lines) - _DIFF_LINES} more diff lines"]
    return lines


def _compare(sink: str, items: list[Any], expect: Expectation) -> list[str]:
    from .expr import ExprError

    problems: list[str] = []
    n = len(items)
    if expect.items is not None:
        expected, received = expect.items, items
        if expect.unordered:
            expected, received = sorted(expected, key=_line), sorted(received, key=_line)
        if expected != received:
            order = " (in any order)" if expect.unordered else ""
            problems.append(
                "\n".join(
                    [f"{sink}: {n} items differ from the {len(expected)} expected{order}:"]
                    + ["  " + line for line in _diff(expected, received)]
                )
            )
    if expect.contains is not None:
        missing = [i for i in expect.contains if i not in items]
        if missing:
            shown = ", ".join(_line(i) for i in missing[:_SHOWN_FAILURES])
            more = (
                f" and {len(missing) - _SHOWN_FAILURES} more"
                if len(missing) > _SHOWN_FAILURES
                else ""
            )
            problems.append(f"{sink}: missing {len(missing)} expected item(s): {shown}{more}")
    if expect.count is not None:
        count = expect.count
        if isinstance(count, CountSpec):
            low = count.min if count.min is not None else 0
            high = count.max
            if n < low or (high is not None and n > high):
                bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
                problems.append(f"{sink}: {n} items, expected {bounds}")
        elif n != count:
            problems.append(f"{sink}: {n} items, expected {count}")
    for kind in ("all", "any", "none"):
        condition = getattr(expect, kind)
        if condition is None:
            continue
        holds: list[bool] = []
        for index, item in enumerate(items):
            try:
                holds.append(bool(condition(item)))
            except (ExprError, KeyError, TypeError, ValueError, ArithmeticError) as exc:
                problems.append(f"{sink}: {kind} {condition.text!r}: item {index}: {exc}")
                holds.append(kind == "none")
        if kind == "all" and not all(holds):
            bad = [i for i, ok in enumerate(holds) if not ok]
            problems.append(_condition_problem(sink, "all", condition.text, bad, items))
        elif kind == "any" and not any(holds):
            problems.append(f"{sink}: any {condition.text!r}: true for none of the {n} items")
        elif kind == "none" and any(holds):
            bad = [i for i, ok in enumerate(holds) if ok]
            problems.append(_condition_problem(sink, "none", condition.text, bad, items))
    return problems


def _condition_problem(sink: str, kind: str, text: str, bad: list[int], items: list[Any]) -> str:
    what = "false" if kind == "all" else "true"
    shown = "; ".join(f"item {i}: {_line(items[i])}" for i in bad[:_SHOWN_FAILURES])
    more = f"; and {len(bad) - _SHOWN_FAILURES} more" if len(bad) > _SHOWN_FAILURES else ""
    return f"{sink}: {kind} {text!r}: {what} for {len(bad)} of {len(items)} items ({shown}{more})"
