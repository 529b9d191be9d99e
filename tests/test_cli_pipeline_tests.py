"""``headwater test``: the test cases of pipeline files, run as ``python -m headwater``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from headwater.core.errors import PipelineValidationError
from headwater.core.pipeline import parse_pipeline
from headwater.core.pipeline_tests import case_pipeline
from headwater.core.testcases import PipelineTestCase
from test_cli import hw, write

LEVELS = """\
name: levels
sources:
  app: {action: file.lines, params: {path: app.log}}
steps:
  - {transformer: regex, params: {pattern: "(?P<level>[A-Z]+) (?P<msg>.*)"}}
  - {transformer: filter, name: errors-only, params: {expr: "level == 'ERROR'"}}
sinks:
  - {sink: jsonl, params: {path: errors.jsonl}}
tests:
  - name: only errors reach the sink
    input: ["ERROR disk full", "INFO started", "ERROR again"]
    expect:
      items: [{level: ERROR, msg: disk full}, {level: ERROR, msg: again}]
      all: "level == 'ERROR'"
  - name: the filter alone
    stage: errors-only
    input: [{level: INFO, msg: a}, {level: ERROR, msg: b}]
    expect: {count: 1, contains: [{level: ERROR, msg: b}]}
"""

WRONG = """\
  - name: a wrong expectation
    input: ["ERROR x", "ERROR y"]
    expect:
      items: [{level: ERROR, msg: x}, {level: ERROR, msg: z}]
      count: {min: 3}
      none: "msg == 'y'"
"""


def test_passing_cases_exit_0_and_write_nowhere(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "levels.yaml", LEVELS)
    proc = hw("test", pipeline, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS  only errors reach the sink (jsonl 2)" in proc.stdout
    assert "PASS  the filter alone (jsonl 1)" in proc.stdout
    assert proc.stdout.splitlines()[-1] == "2 passed, 0 failed"
    assert not (tmp_path / "errors.jsonl").exists()  # sinks are replaced by collectors
    assert not (tmp_path / "app.log").exists()  # and the sources by the input


def test_a_failing_case_exits_1_with_a_readable_diff(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "levels.yaml", LEVELS + WRONG)
    proc = hw("test", pipeline, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "FAIL  a wrong expectation" in out
    assert "jsonl: 2 items differ from the 2 expected:" in out
    assert re.search(r'^\s+-\{"level": "ERROR", "msg": "z"\}$', out, re.M), out
    assert re.search(r'^\s+\+\{"level": "ERROR", "msg": "y"\}$', out, re.M), out
    assert "jsonl: 2 items, expected at least 3" in out
    assert """none "msg == 'y'": true for 1 of 2 items (item 1:""" in out
    assert out.splitlines()[-1] == "2 passed, 1 failed"
    only = hw("test", pipeline, "-k", "filter", cwd=tmp_path)
    assert (only.returncode, only.stdout.splitlines()[-1]) == (0, "1 passed, 0 failed")


def test_cases_beside_the_pipeline_in_a_tests_file(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "levels.yaml", LEVELS.split("tests:")[0])
    write(
        tmp_path,
        "levels.tests.yaml",
        "tests:\n"
        + WRONG.replace("z}]", "y}]")
        .replace("count: {min: 3}", "count: 2")
        .replace("none:", "any:"),
    )
    for target in (pipeline, tmp_path / "levels.tests.yaml"):
        proc = hw("test", target, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "PASS  a wrong expectation (jsonl 2)" in proc.stdout


@pytest.mark.parametrize(
    ("tests", "problem"),
    [
        ("", "no test cases: add tests: to the file, or write p.tests.yaml beside it"),
        (
            "tests: [{name: t, input: [1], expect: {all: 'item.x'}}]\n",
            "tests[0].expect.all",
        ),
        ("tests: [{name: t, input: [1], expect: {}}]\n", "give at least one of items"),
        (
            "tests: [{name: t, input: [1], expect: {count: 1}, stage: nope}]\n",
            "no step or sink 'nope'",
        ),
        ("tests: [{name: t, input: {other: [1]}, expect: {count: 1}}]\n", "no source 'other'"),
    ],
)
def test_invalid_tests_exit_2_naming_the_problem(tmp_path: Path, tests: str, problem: str) -> None:
    base = "name: p\nsources: {n: {action: range, params: {stop: 3}}}\nsinks: [{sink: collect}]\n"
    pipeline = write(tmp_path, "p.yaml", base + tests)
    proc = hw("test", pipeline, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert problem in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


MERGED = """\
name: merged
sources:
  a: {action: range, params: {stop: 3}}
  b: {action: range, params: {stop: 3}}
compose: {merge: [a, b]}
steps:
  - {transformer: map, on_error: skip, params: {expr: "10 // item"}}
sinks:
  - {sink: collect, name: all}
  - {sink: collect, name: big, where: {expr: "item >= 5"}}
dead_letter: {sink: jsonl, params: {path: dead.jsonl}}
tests:
  - name: per source, per sink, dead letters
    input: {a: [1, 2], b: [0, 5]}
    expect:
      - {sink: all, items: [10, 5, 2], unordered: true}
      - {sink: big, items: [10, 5], unordered: true}
      - {sink: dead_letter, count: 1}
  - name: a run that must fail
    set: {steps.0.on_error: fail}
    input: {a: [0]}
    state: failed
    error: ZeroDivisionError
    expect: {sink: all, count: 0}
"""


def test_merged_sources_routed_sinks_dead_letters_and_failures(tmp_path: Path) -> None:
    pipeline = write(tmp_path, "merged.yaml", MERGED)
    proc = hw("test", pipeline, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 passed, 0 failed"
    assert not (tmp_path / "dead.jsonl").exists()
    run = hw("run", pipeline, "--no-progress", cwd=tmp_path)  # runs ignore tests:
    assert run.returncode == 0, run.stderr
    assert len((tmp_path / "dead.jsonl").read_text().splitlines()) == 2  # 10 // 0, twice


def test_case_pipeline_replaces_sources_and_sinks() -> None:
    data = parse_pipeline(
        {
            "name": "p",
            "sources": {"n": {"action": "range", "params": {"stop": 3}}},
            "steps": [{"transformer": "map", "params": {"expr": "item"}}],
            "sinks": [{"sink": "jsonl", "params": {"path": "x"}}, {"sink": "jsonl"}],
            "checkpoint": {"every_items": 10},
        }
    ).model_dump(exclude_unset=True)
    case = PipelineTestCase.model_validate({"name": "c", "input": [1], "expect": {"count": 1}})
    out = case_pipeline(data, case)
    assert out["sources"] == {"n": {"action": "iterable", "params": {"items": [1]}}}
    assert [(s["sink"], s["name"], s["params"]) for s in out["sinks"]] == [
        ("collect", "jsonl", {}),
        ("collect", "jsonl[1]", {}),
    ]
    assert "checkpoint" not in out
    staged = PipelineTestCase.model_validate(
        {"name": "c", "input": [1], "stage": "sinks.jsonl", "expect": {"count": 1}}
    )
    out = case_pipeline(data, staged)
    assert (out["steps"], [s["name"] for s in out["sinks"]]) == ([], ["jsonl"])
    with pytest.raises(PipelineValidationError, match="give the items per source"):
        case_pipeline({**data, "sources": {"a": {}, "b": {}}}, case)
