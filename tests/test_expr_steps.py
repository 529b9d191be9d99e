"""``expr`` in the built-in ``filter``, ``map`` and ``select``: through the pipeline API
and through the ``headwater`` command (``python -m headwater`` in a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import headwater
from headwater.builtin_plugins.transformers import (
    CallableParams,
    filter_transformer,
    map_transformer,
    select_transformer,
)

LOGS = [
    {"level": "ERROR", "latency": 0.7, "path": "/a"},
    {"level": "INFO", "latency": 0.9, "path": "/b"},
    {"level": "ERROR", "latency": 0.2, "path": "/c"},
    {"latency": 1.5, "path": "/d"},
    {"level": "ERROR", "latency": 2.0, "path": "/e"},
]


def run(items: Any, *steps: dict[str, Any], dead_letter: bool = False) -> headwater.RunResult:
    model: dict[str, Any] = {
        "name": "expr",
        "sources": {"items": {"action": "iterable", "params": {"items": items}}},
        "steps": list(steps),
        "sinks": [{"sink": "collect"}],
    }
    if dead_letter:
        model["dead_letter"] = {"sink": "collect"}
    return headwater.run_sync(model)


def issues(*steps: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(headwater.PipelineValidationError) as info:
        run([1], *steps)
    return {issue.path: issue.message for issue in info.value.issues}


# ---------------------------------------------------------------------------------------
# filter, map, select
# ---------------------------------------------------------------------------------------


def test_filter_with_expr() -> None:
    result = run(list(range(10)), {"transformer": "filter", "params": {"expr": "item % 3 == 0"}})
    assert result.output == [0, 3, 6, 9]


def test_map_with_expr() -> None:
    result = run(LOGS[:2], {"transformer": "map", "params": {"expr": "latency * 1000"}})
    assert result.output == [700.0, 900.0]


def test_filter_then_select_computing_fields() -> None:
    result = run(
        LOGS,
        {
            "transformer": "filter",
            "params": {"expr": "get(item, 'level') == 'ERROR' and latency > 0.5"},
        },
        {
            "transformer": "select",
            "params": {"fields": ["path"], "expr": {"ms": "round(latency * 1000)"}},
        },
    )
    assert result.output == [{"path": "/a", "ms": 700}, {"path": "/e", "ms": 2000}]


def test_a_missing_field_fails_the_run_naming_the_item() -> None:
    with pytest.raises(headwater.PipelineFailed) as info:
        run(LOGS, {"transformer": "filter", "params": {"expr": "level == 'ERROR'"}})
    error = info.value.errors[0]
    assert isinstance(error, headwater.StageError)
    assert error.position == 3
    assert isinstance(error.cause, headwater.MissingField)
    assert "item has no field 'level'" in str(error)


def test_a_missing_field_follows_the_steps_error_policy() -> None:
    step = {"transformer": "filter", "params": {"expr": "level == 'ERROR'"}, "on_error": "skip"}
    result = run(LOGS, step, dead_letter=True)
    assert [item["path"] for item in result.output] == ["/a", "/c", "/e"]
    dead = result.outputs["dead_letter"]
    assert [(d["item"]["path"], d["error"], d["message"]) for d in dead] == [
        ("/d", "MissingField", "item has no field 'level'")
    ]


def test_a_bound_exceeded_at_run_time_fails_that_item_only() -> None:
    step = {"transformer": "map", "params": {"expr": "s * n"}, "on_error": "skip"}
    items = [{"s": "ab", "n": 2}, {"s": "ab", "n": 10**9}, {"s": "c", "n": 3}]
    result = run(items, step, dead_letter=True)
    assert result.output == ["abab", "ccc"]
    (dead,) = result.outputs["dead_letter"]
    assert dead["error"] == "ExprLimitError"
    assert "exceeds 1,000,000 elements" in dead["message"]


@pytest.mark.parametrize(("missing", "expected"), [("null", {"y": None}), ("omit", {})])
def test_select_missing_applies_to_expressions(missing: str, expected: dict[str, Any]) -> None:
    step = {"transformer": "select", "params": {"expr": {"y": "x * 2"}, "missing": missing}}
    result = run([{"x": 1}, {}], step)
    assert result.output == [{"y": 2}, expected]


def test_select_mixes_fields_rename_and_expressions_in_order() -> None:
    step = {
        "transformer": "select",
        "params": {
            "fields": ["a"],
            "rename": {"bee": "b"},
            "expr": {"sum": "a + b", "big": "a + b > 2"},
        },
    }
    result = run([{"a": 1, "b": 2, "c": 3}], step)
    assert result.output == [{"a": 1, "bee": 2, "sum": 3, "big": True}]
    assert list(result.output[0]) == ["a", "bee", "sum", "big"]


def test_expr_steps_mix_with_fn_steps() -> None:
    result = run(
        ["1", "22", "333"],
        {"transformer": "map", "params": {"fn": "builtins:len"}},
        {"transformer": "filter", "params": {"expr": "item > 1"}},
        {"transformer": "map", "params": {"expr": "item * 10"}},
    )
    assert result.output == [20, 30]


def test_the_builder_takes_expr_through_step() -> None:
    pipeline = (
        headwater.Pipeline("b")
        .source("range", stop=6)
        .step("filter", expr="item % 2 == 1")
        .step("map", expr="item * item")
        .sink("collect")
    )
    assert pipeline.run_sync().output == [1, 9, 25]


def test_expr_steps_stay_item_wise_and_run_the_compiled_function() -> None:
    for component in (filter_transformer, map_transformer, select_transformer):
        assert component.itemwise, component.name  # so the runtime fuses them
    params = CallableParams.model_validate({"expr": "item > 1"})
    assert params.expr is not None
    assert filter_transformer.obj(params) is params.expr.fn  # no wrapper per item


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------


def test_fn_or_expr_exactly_one() -> None:
    assert issues({"transformer": "filter", "params": {}}) == {
        "steps[0].params": "give exactly one of fn and expr"
    }
    both = {"fn": "builtins:bool", "expr": "item"}
    assert issues({"transformer": "map", "params": both}) == {
        "steps[0].params": "give exactly one of fn and expr"
    }


def test_expression_errors_name_the_param_line_and_column() -> None:
    found = issues(
        {"transformer": "filter", "params": {"expr": "item % 3 == foo(1)"}},
        {"transformer": "map", "params": {"expr": "item.__class__"}},
        {"transformer": "select", "params": {"expr": {"ok": "x", "bad": "x &&"}}},
    )
    assert found["steps[0].params.expr"].startswith("line 1, column 13: name 'foo' is not allowed")
    assert found["steps[1].params.expr"] == (
        "line 1, column 6: attribute '__class__' is not allowed"
    )
    assert found["steps[2].params.expr.bad"] == (
        "line 1, column 3: invalid syntax: write 'and' instead of '&&'"
    )


def test_select_expr_names_must_not_clash() -> None:
    found = issues(
        {"transformer": "select", "params": {"fields": ["a"], "expr": {"a": "a + 1"}}},
        {"transformer": "select", "params": {"rename": {"b": "x"}, "expr": {"b": "1"}}},
        {"transformer": "select", "params": {"expr": {"": "1"}}},
    )
    assert found == {
        "steps[0].params.expr": "new name 'a' is also listed in fields; expr would overwrite it",
        "steps[1].params.expr": "new name 'b' is also listed in rename; expr would overwrite it",
        "steps[2].params.expr": "a new name must not be empty",
    }


def test_expr_needs_no_allowance_from_the_operator() -> None:
    engine = headwater.Engine(policy=headwater.SandboxPolicy())
    model: dict[str, Any] = {
        "name": "p",
        "sources": {"n": {"action": "range", "params": {"stop": 4}}},
        "steps": [{"transformer": "filter", "params": {"fn": "subprocess:getoutput"}}],
        "sinks": [{"sink": "collect"}],
    }
    with pytest.raises(headwater.PipelineValidationError, match="not allowed"):
        headwater.run_sync(model, engine=engine)
    model["steps"] = [{"transformer": "filter", "params": {"expr": "bool(item)"}}]
    assert headwater.run_sync(model, engine=engine).output == [1, 2, 3]


# ---------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------

PIPELINE = """\
name: errors
sources:
  logs:
    action: iterable
    params:
      items:
        - {level: ERROR, latency: 0.7, path: /a}
        - {level: INFO, latency: 0.9, path: /b}
        - {level: ERROR, latency: 0.1, path: /c}
steps:
  - {transformer: filter, params: {expr: "level == 'ERROR' and latency > 0.5"}}
  - {transformer: select, params: {fields: [path], expr: {ms: "latency * 1000"}}}
sinks:
  - {sink: jsonl, params: {path: out.jsonl}}
"""


def hw(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def test_headwater_run_with_expressions(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE, encoding="utf-8")
    proc = hw("run", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"path": "/a", "ms": 700.0}]


def test_headwater_validate_accepts_expressions(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE, encoding="utf-8")
    proc = hw("validate", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: pipeline 'errors'")


def test_headwater_validate_reports_a_bad_expression(tmp_path: Path) -> None:
    text = PIPELINE.replace("latency > 0.5", "latency > foo(1)").replace(
        '"latency * 1000"', '"().__class__.__bases__[0].__subclasses__()"'
    )
    (tmp_path / "p.yaml").write_text(textwrap.dedent(text), encoding="utf-8")
    proc = hw("validate", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "steps[0].params.expr: line 1, column 32: name 'foo' is not allowed" in proc.stderr
    assert (
        "steps[1].params.expr.ms: line 1, column 27: attribute '__subclasses__' is not allowed"
        in proc.stderr
    )


def test_headwater_run_reports_a_missing_field(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(PIPELINE.replace("level: INFO, ", ""), encoding="utf-8")
    proc = hw("run", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "stage steps[0].filter" in proc.stderr
    assert "at item 1: MissingField: item has no field 'level'" in proc.stderr
