"""Hostile and random pipeline files against ``headwater validate`` and ``headwater run``.

Whatever a file holds, the commands answer with exit code 0 (valid; the run succeeded),
1 (a run that failed in one of its stages) or 2 (the file is refused), never with a
traceback; a refusal names the file; and what ``validate`` accepts, ``run`` starts: a
run never fails in its set-up. The commands run in process (``headwater.cli.main``) for
speed, and for real as subprocesses for a few files, where the peak memory of a batch of
hostile files is measured too.
"""

from __future__ import annotations

import io
import json
import re
import string
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.cli import main
from headwater.core.engine import set_default_engine
from headwater.core.yamlfile import MAX_DEPTH, MAX_INTEGER_DIGITS, MAX_NODES

TIMEOUT = 120
"""Upper bound of one subprocess; only hit when something hangs."""


@pytest.fixture(autouse=True)
def _keep_default_engine() -> Iterator[None]:
    """Each command makes its engine the default one: restore the test's afterwards."""
    previous = set_default_engine(None)
    set_default_engine(previous)
    yield
    set_default_engine(previous)


def command(*args: str) -> tuple[int, str, str]:
    """``headwater ARGS`` in process: ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str, path: Path, allowed: tuple[int, ...] = (0, 2)) -> None:
    """An allowed exit code, no traceback, and a refusal that names the file."""
    assert code in allowed, err
    assert "Traceback" not in err, err
    assert "error: unexpected " not in err, err  # an exception that escaped the command
    assert "unexpected error" not in err, err  # one that broke a run outside its stages
    if code == 2:
        assert str(path) in err, err


# -- strategies ---------------------------------------------------------------------------

anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
small_ints = st.integers(-3, 50)
names = st.text(string.ascii_lowercase + "_.-", min_size=1, max_size=8)

SOURCES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "range": {"start": small_ints, "stop": small_ints, "step": small_ints, "chunk": small_ints},
    "iterable": {"items": st.lists(anything, max_size=5) | anything},
}
STEPS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "map": {"fn": st.sampled_from(["builtins:str", "builtins:repr", "nope:x"]), "expr": names},
    "filter": {"expr": st.sampled_from(["item", "item > 1", "len(item)", ")("])},
    "select": {"fields": st.lists(names, max_size=3), "missing": names},
    "regex": {"pattern": st.text("a.*+?()[]{}\\|^$", max_size=6), "mode": names},
    "batch": {"size": small_ints, "seconds": st.floats(-1, 1)},
    "window": {"type": names, "size": small_ints, "step": small_ints, "seconds": small_ints},
    "take": {"count": small_ints},
    "skip": {"count": small_ints},
    "dedupe": {"key": names | st.none(), "max_keys": small_ints},
    "aggregate": {"op": st.sampled_from(["count", "sum", "avg", "max", "bogus"]), "field": names},
    "flatten": {"depth": small_ints | st.none()},
    "json.encode": {"sort_keys": st.booleans(), "default": names},
    "throttle": {"rate": st.floats(0, 1e6), "burst": small_ints},
}
SINKS: dict[str, dict[str, st.SearchStrategy[Any]]] = {"collect": {}, "null": {}}


@st.composite
def component(
    draw: st.DrawFn, table: dict[str, dict[str, st.SearchStrategy[Any]]], key: str
) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(table)))
    fields = table[name]
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True)) if fields else []
    params = {field: draw(fields[field]) for field in chosen}
    if draw(st.integers(0, 9)) == 0:
        params[draw(names)] = draw(anything)  # an unknown param now and then
    entry: dict[str, Any] = {key: name}
    if params:
        entry["params"] = params
    return entry


@st.composite
def pipelines(draw: st.DrawFn) -> dict[str, Any]:
    """Pipelines of the right shape with random values (mostly small enough to run)."""
    sources = draw(st.dictionaries(names, component(SOURCES, "action"), min_size=1, max_size=2))
    data: dict[str, Any] = {"name": draw(names), "sources": sources}
    if len(sources) > 1 or draw(st.booleans()):
        data["compose"] = {draw(st.sampled_from(["merge", "zip", "concat"])): list(sources)}
    data["steps"] = draw(st.lists(component(STEPS, "transformer"), max_size=3))
    for step in data["steps"]:
        if draw(st.integers(0, 4)) == 0:
            step["on_error"] = draw(st.sampled_from(["skip", "retry", "fail", "ignore"]))
    data["sinks"] = draw(st.lists(component(SINKS, "sink"), min_size=1, max_size=2))
    if draw(st.booleans()):
        data["batch_size"] = draw(st.integers(-1, 70000))
    data["timeouts"] = {"total": 20}
    return data


# -- validate and run, in process -----------------------------------------------------------


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=pipelines(), json_file=st.booleans())
def test_what_validate_accepts_run_starts(
    tmp_path: Path, data: dict[str, Any], json_file: bool
) -> None:
    path = tmp_path / ("p.json" if json_file else "p.yaml")
    path.write_text(
        yaml.safe_dump(data, default_flow_style=json_file, allow_unicode=True)
        if not json_file
        else json.dumps(data)
    )
    code, _, err = command("validate", str(path))
    assert_clean(code, err, path)
    if code != 0:
        return
    code, _, err = command("run", str(path), "--no-progress")
    assert_clean(code, err, path, allowed=(0, 1))
    if code == 1:  # a failure is one of a stage's, never of the set-up
        assert "error: pipeline " in err, err
        assert ", stage " in err, err


yaml_text = st.text(st.sampled_from("ab1:-[]{}, \n\t'\"!&*<=#|>%@`.?$x9"), max_size=80)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=yaml_text)
def test_random_text_is_valid_or_refused_with_the_file_named(tmp_path: Path, text: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    code, _, err = command("validate", str(path))
    assert_clean(code, err, path)
    assert code == 2  # none of these is a pipeline


def laughs(levels: int, width: int) -> str:
    """A "billion laughs" as the ``items`` of an ``iterable`` source (an ``Any`` param):
    ``levels`` anchored lists, each of ``width`` aliases of the one before."""
    lists = ["&x0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lists.append(f"&x{i} [" + ", ".join([f"*x{i - 1}"] * width) + "]")
    return (
        "name: laughs\nsources:\n  n:\n    action: iterable\n    params:\n"
        f"      items: [{', '.join(lists)}]\n"
        "steps: [{transformer: flatten, params: {depth: 10}}]\nsinks: [{sink: collect}]\n"
    )


def hostile() -> list[tuple[str, str, str]]:
    """``(file name, text, what the refusal says)``."""
    deep = "[" * (MAX_DEPTH * 50) + "]" * (MAX_DEPTH * 50)
    return [
        ("laughs.yaml", laughs(9, 10), f"more than {MAX_NODES:,} nodes (at *x"),
        ("wide.yaml", laughs(3, 60), f"more than {MAX_NODES:,} nodes (at *x"),
        (
            "int.yaml",
            "name: p\nsources:\n  n:\n    action: range\n    params:\n      stop: " + "1" * 5000,
            "int.yaml:6: sources.n.params.stop: integer has 5000 digits "
            f"(limit {MAX_INTEGER_DIGITS})",
        ),
        ("deep.yaml", f"name: p\nsources: {deep}\n", f"nesting deeper than {MAX_DEPTH} levels"),
        ("deep.json", '{"name": "p", "sources": ' + deep + "}", "deep.json:1: sources[0][0]"),
        (
            "recursive.yaml",
            "name: p\nsources:\n  n: &n {action: iterable, params: {items: [*n]}}\n",
            "recursive.yaml:3: sources.n.params.items[0]: alias *n is inside the node it names",
        ),
        (
            "dup.yaml",
            "name: p\nsources:\n  n: {action: range}\n  n: {action: range}\nsinks: []\n",
            "dup.yaml:4: sources.n: duplicate key 'n' (first at line 3)",
        ),
    ]


@pytest.mark.parametrize(("name", "text", "says"), hostile(), ids=[h[0] for h in hostile()])
@pytest.mark.parametrize("verb", ["validate", "run"])
def test_hostile_files_are_refused_with_file_line_and_path(
    tmp_path: Path, verb: str, name: str, text: str, says: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    code, out, err = command(verb, str(path))
    assert_clean(code, err, path)
    assert code == 2
    assert says in err
    assert out == ""


def set_laughs(levels: int) -> str:
    """A "billion laughs" small enough for a command line (``--set KEY=VALUE``)."""
    lists = ["&a0 [" + ", ".join(["x"] * 9) + "]"]
    lists += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(lists) + "]"


TWO_SOURCES = """\
name: p
sources:
  n: {action: range, params: {stop: 3}}
  any: {action: iterable, params: {items: [1]}}
compose: {concat: [n, any]}
steps: [{transformer: flatten, params: {depth: 100}}]
sinks: [{sink: collect}]
"""


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("n.params.stop", "1" * 5000, "integer has 5000 digits (limit 100)"),
        ("n.params.stop", "[" * 5000 + "]" * 5000, "nesting deeper than 100 levels"),
        ("n.params.stop", set_laughs(9), "aliases expand the document to more than"),
        ("any.params.items", "&a [1, *a]", "alias *a is inside the node it names"),
    ],
    ids=["int", "deep", "laughs", "recursive"],
)
@pytest.mark.parametrize("verb", ["validate", "run"])
def test_set_values_have_the_same_limits(
    tmp_path: Path, verb: str, key: str, value: str, says: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(TWO_SOURCES)
    code, _, err = command(verb, str(path), "--set", f"sources.{key}={value}")
    assert (code, "Traceback" in err) == (2, False), err
    assert f"headwater: error: --set sources.{key}: {says}" in err


def test_a_valid_pipeline_with_aliases_within_the_limits_runs(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(laughs(4, 10))  # 11,110 nodes through aliases: fine
    code, _, err = command("run", str(path), "--no-progress")
    assert code == 0, err
    assert re.search(r"^collect\s+11,110\s+kept in memory", err, re.M), err


# -- for real, and the memory it takes ------------------------------------------------------

WORKER = """\
import json, sys
from pathlib import Path
from headwater.cli import main

codes = {}
for path in sorted(Path(sys.argv[1]).iterdir()):
    # the largest files are parsed once: parsing is what they cost
    for verb in ("validate", "run") if path.stat().st_size < 100_000 else ("validate",):
        codes[f"{verb} {path.name}"] = main([verb, str(path)])
# a "billion laughs" given on the command line, into an ``Any`` param
with open(sys.argv[1] + ".bomb") as bomb:
    codes["run --set items=BOMB"] = main(
        ["run", sys.argv[1] + ".yaml", "--set", "sources.any.params.items=" + bomb.read()]
    )
print(json.dumps(codes))
"""

MEASURE = """\
import json, resource, subprocess, sys
def limit():  # a worker that runs away fails fast instead of taking the machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (2 * 1024**3, 2 * 1024**3))
proc = subprocess.run(
    [sys.executable, "-c", *sys.argv[1:]],
    capture_output=True, text=True, preexec_fn=limit, timeout=100,
)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": proc.returncode, "out": proc.stdout, "peak_kb": peak_kb}))
sys.stderr.write(proc.stderr)
"""


def test_hostile_files_for_real_within_bounded_memory(tmp_path: Path) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    for name, text, _ in hostile():
        (folder / name).write_text(text)
    largest = "name: p\nx: [" + ", ".join(["{a: b}"] * (MAX_NODES // 3 - 10)) + "]\n"
    (folder / "largest.yaml").write_text(largest)  # as many nodes as a file may hold
    (folder / "huge.yaml").write_text("name: p\nx: '" + "a" * 4_000_000 + "'\n")
    (folder / "ints.yaml").write_text("x: [" + ", ".join(["9" * 100] * 5000) + "]\n")
    (tmp_path / "files.yaml").write_text(TWO_SOURCES)
    (tmp_path / "files.bomb").write_text(set_laughs(10))
    # the measuring process starts the worker, its only child, and reports the child's
    # peak resident memory (kilobytes on Linux)
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, WORKER, str(folder)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    report = json.loads(proc.stdout)
    assert report["code"] == 0, proc.stderr
    codes = json.loads(report["out"])
    assert set(codes.values()) == {2}, (codes, proc.stderr)  # every file refused
    assert len(codes) == 2 * len(hostile()) + 4
    assert "Traceback" not in proc.stderr
    assert "huge.yaml: larger than 1,048,576 bytes" in proc.stderr
    assert report["peak_kb"] < 200 * 1024, f"peak RSS {report['peak_kb'] // 1024} MB"
