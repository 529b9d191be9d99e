"""The YAML loader of pipeline files, server configurations and jobs files, and the error
type they share."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, ValidationError

import headwater
from headwater.core.errors import (
    InvalidFileError,
    ValidationIssue,
    format_loc,
    issues_from_pydantic,
    join_path,
)
from headwater.core.jobs import JobsFileError
from headwater.core.scheduler import SchedulerError
from headwater.core.yamlfile import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_INTEGER_DIGITS,
    MAX_NODES,
    YamlFileError,
    load_yaml_file,
    parse_yaml,
    read_yaml,
)
from headwater.server.config import ServerConfigError

# -- properties ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
keys = st.text(max_size=10) | st.integers(-1000, 1000)
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(data=documents, flow=st.booleans())
def test_safe_dumps_round_trip(data: Any, flow: bool) -> None:
    text = yaml.safe_dump(data, default_flow_style=flow, sort_keys=False)
    assert parse_yaml(text) == data


@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.text(min_size=1, max_size=8), documents), min_size=1, max_size=6
    ).filter(lambda ps: len({k for k, _ in ps}) == len(ps)),
    data=st.data(),
)
def test_a_duplicate_key_is_rejected_with_the_key_and_both_lines(
    pairs: list[tuple[str, Any]], data: st.DataObject
) -> None:
    first = data.draw(st.integers(0, len(pairs) - 1), label="duplicated")
    key = pairs[first][0]
    again = data.draw(st.integers(first + 1, len(pairs)), label="inserted at")
    entries = [*pairs[:again], (key, data.draw(documents, label="value")), *pairs[again:]]
    chunks = [yaml.safe_dump({k: v}, default_flow_style=False) for k, v in entries]
    text = "".join(chunks)
    with pytest.raises(YamlFileError) as info:
        parse_yaml(text, path="dup.yaml")
    error = info.value
    first_line = 1 + sum(c.count("\n") for c in chunks[:first])
    assert error.problem == f"duplicate key {key!r} (first at line {first_line})"
    assert error.line == 1 + sum(c.count("\n") for c in chunks[:again])
    assert error.column in (1, 3)  # 3: a key in the explicit form ``? KEY``
    assert error.where == key
    assert str(error).startswith(f"dup.yaml:{error.line}: ")
    assert str(error).endswith(f": duplicate key {key!r} (first at line {first_line})")


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.sampled_from("ab1:-[]{}, \n\t'\"!&*<=#|>%@`.?\x00"), max_size=60))
def test_any_text_parses_or_raises_a_yaml_file_error(text: str) -> None:
    try:
        parse_yaml(text)
    except YamlFileError as exc:
        error = exc
    else:
        return
    assert error.problem
    assert "\n" not in error.describe()


# -- limits and mistakes ------------------------------------------------------------------


def laughs(levels: int) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def problem(text: str) -> tuple[int | None, str]:
    with pytest.raises(YamlFileError) as info:
        parse_yaml(text)
    return info.value.line, info.value.problem


def located(text: str) -> str:
    """The error of ``text`` as the loader words it for a file ``pipe.yaml``."""
    with pytest.raises(YamlFileError) as info:
        parse_yaml(text, path="pipe.yaml")
    return str(info.value)


def test_aliases_are_bounded() -> None:
    assert len(parse_yaml(laughs(4))["l3"]) == 10  # 1,000 nodes behind *l2: fine
    line, message = problem(laughs(9))
    assert message == f"aliases expand the document to more than {MAX_NODES:,} nodes (at *l3)"
    assert line == 5  # l4: its aliases stand for 111,110 nodes
    assert located(laughs(9)).startswith("pipe.yaml:5: l4[")
    assert located("a: &a [1, *a]\n") == (
        "pipe.yaml:1: a[1]: alias *a is inside the node it names (a recursive structure)"
    )
    assert located("a: &a {b: [1, {c: *a}]}\n").startswith("pipe.yaml:1: a.b[1].c: alias *a ")


def test_nodes_are_bounded_without_aliases_too() -> None:
    assert len(parse_yaml("[" + "1," * (MAX_NODES - 2) + "]")) == MAX_NODES - 2
    assert problem("[" + "1," * MAX_NODES + "]") == (
        1,
        f"the document has more than {MAX_NODES:,} nodes",
    )


def test_nesting_is_bounded_aliases_included() -> None:
    assert parse_yaml("[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)) is not None
    assert problem("[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)) == (
        1,
        f"nesting deeper than {MAX_DEPTH} levels",
    )
    deep = "a:\n  b: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    assert located(deep) == (
        f"pipe.yaml:2: a.b[0][0][0][0][0][0][0][0][0][0]...: nesting deeper than {MAX_DEPTH} levels"
    )
    half = MAX_DEPTH // 2 + 5
    text = "a: &a " + "[" * half + "]" * half + "\nb: " + "[" * half + "*a" + "]" * half + "\n"
    line, message = problem(text)
    assert (line, message) == (2, f"nesting deeper than {MAX_DEPTH} levels (through alias *a)")


def test_integers_are_bounded() -> None:
    assert parse_yaml("n: " + "9" * MAX_INTEGER_DIGITS) == {"n": int("9" * MAX_INTEGER_DIGITS)}
    assert parse_yaml("n: -0x" + "f" * MAX_INTEGER_DIGITS)["n"] == -int("f" * 100, 16)
    text = "sources:\n  n:\n    params: {stop: " + "1_" * 2500 + "}\n"
    assert located(text) == (
        f"pipe.yaml:3: sources.n.params.stop: integer has 2500 digits (limit {MAX_INTEGER_DIGITS})"
    )
    assert problem("[!!int '" + "9" * 5000 + "']")[1] == "integer has 5000 digits (limit 100)"
    assert problem("{" + "9" * 5000 + ": a}")[1] == "integer has 5000 digits (limit 100)"
    assert parse_yaml("n: '" + "9" * 5000 + "'")["n"] == "9" * 5000  # a string is fine


def test_scalars_pyyaml_cannot_build_are_yaml_errors() -> None:
    assert problem("when: 2024-13-01\n") == (
        1,
        "cannot read timestamp '2024-13-01': month must be in 1..12",
    )
    assert problem("when: !!timestamp soon\n") == (
        1,
        "cannot read timestamp 'soon' (not a valid timestamp)",
    )
    assert problem("x: !!python/object/apply:os.system [ls]\n")[1].startswith(
        "could not determine a constructor"
    )
    assert problem("a: 1\nb: \x00\n") == (
        2,
        "not valid YAML: unacceptable character #x0000: special characters are not allowed",
    )


def test_merge_keys_work_and_explicit_keys_win() -> None:
    text = "base: &base {x: 1, y: 2}\nmore: &more {z: 3}\nd:\n  <<: [*base, *more]\n  x: 9\n"
    assert parse_yaml(text)["d"] == {"x": 9, "y": 2, "z": 3}
    line, message = problem("d:\n  <<: {a: 1}\n  <<: {b: 2}\n")
    assert line == 3
    assert message.startswith("duplicate merge key << (first at line 2)")
    assert located("a:\n  b: 1\n  b: 2\n") == (
        "pipe.yaml:3: a.b: duplicate key 'b' (first at line 2)"
    )


def test_other_mistakes_name_line_and_problem() -> None:
    assert problem("a: 1\n  b: 2\n") == (
        2,
        "not valid YAML: mapping values are not allowed here (column 4)",
    )
    assert problem("a: 1\n---\nb: 2\n") == (
        2,
        "not valid YAML: expected a single document in the stream, but found another "
        "document (column 1)",
    )
    assert located("a:\n  b: [1, 2\n") == (
        "pipe.yaml:3: a.b: not valid YAML: expected ',' or ']', but got '<stream end>' (column 1)"
    )
    assert problem("a: &x 1\nb: &x 2\n") == (2, "duplicate anchor &x (first at line 1)")
    assert problem("{1: a, 0x1: b}") == (1, "duplicate key 1 (first at line 1)")
    assert parse_yaml("") is None
    assert math.isinf(parse_yaml("x: .inf")["x"])


def test_reading_files(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: [1, 2]\n", encoding="utf-8")
    assert read_yaml(path) == {"a": [1, 2]}
    with pytest.raises(YamlFileError) as info:
        read_yaml(tmp_path / "nope.yaml")
    assert info.value.unreadable
    assert str(info.value) == f"cannot read {tmp_path / 'nope.yaml'}: No such file or directory"
    path.write_bytes(b"a: \xff\n")
    with pytest.raises(YamlFileError, match=r"not UTF-8 text \(invalid start byte at byte 3\)"):
        read_yaml(path)
    path.write_text("a: [1\n", encoding="utf-8")
    with pytest.raises(headwater.PipelineValidationError) as raised:
        load_yaml_file(path, headwater.PipelineValidationError)
    assert raised.value.source == str(path)
    [issue] = raised.value.issues
    assert (issue.path, issue.line) == ("a", 2)
    assert issue.message.startswith("not valid YAML: expected ',' or ']'")
    assert f"\n  {path}:2: a: not valid YAML: expected" in str(raised.value)
    path.write_text("a: " + "x" * MAX_FILE_BYTES, encoding="utf-8")
    with pytest.raises(YamlFileError, match=r"larger than 1,048,576 bytes") as info:
        read_yaml(path)
    assert info.value.unreadable


# -- the shared error type and the pydantic converter --------------------------------------


def test_invalid_file_errors_share_a_base_and_keep_their_messages() -> None:
    issues = [ValidationIssue("a.b", "bad"), ValidationIssue("", "worse")]
    for cls, text in [
        (headwater.PipelineValidationError, "invalid pipeline in f.yaml (2 problems):"),
        (ServerConfigError, "invalid server configuration in f.yaml (2 problems):"),
        (JobsFileError, "invalid jobs file f.yaml (2 problems):"),
    ]:
        error = cls(issues, "f.yaml")
        assert isinstance(error, InvalidFileError)
        assert isinstance(error, headwater.HeadwaterError)
        assert str(error) == f"{text}\n  a.b: bad\n  worse"
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is cls
        assert (again.issues, again.source, str(again)) == (issues, "f.yaml", str(error))
    assert isinstance(JobsFileError([]), SchedulerError)
    assert (
        str(ServerConfigError([issues[0]]))
        == "invalid server configuration (1 problem):\n  a.b: bad"
    )


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: _Inner
    token: str | _Inner = "x"


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[_Step]


def test_pydantic_errors_become_dotted_issues() -> None:
    data = {
        "steps": [
            {"params": {"pattern": "a"}},
            {"params": {"pattern": "b"}},
            {"params": {"pattern": 3, "flags": 1}, "token": 5},
            {},
        ],
        "bogus": 1,
    }
    with pytest.raises(ValidationError) as info:
        _Outer.model_validate(data)
    issues = issues_from_pydantic(info.value, ("pipeline",), union_tags=("str", "_Inner"))
    assert [str(i) for i in issues] == [
        "pipeline.steps[2].params.pattern: Input should be a valid string",
        "pipeline.steps[2].params.flags: unknown key",
        "pipeline.steps[2].token: Input should be a valid string",
        "pipeline.steps[2].token: Input should be a valid dictionary or instance of _Inner",
        "pipeline.steps[3].params: required key is missing",
        "pipeline.bogus: unknown key",
    ]
    assert format_loc(("steps", 2, "params", "pattern")) == "steps[2].params.pattern"
    assert join_path("steps", "[2]") == "steps[2]"
    assert join_path("steps[2]", "params") == "steps[2].params"
    assert join_path("", "x") == "x"
    assert join_path("x", "") == "x"


def test_pipeline_server_and_jobs_files_refuse_duplicate_keys(tmp_path: Path) -> None:
    from headwater.core.jobs import load_jobs
    from headwater.server.config import load_server_config

    cases: list[tuple[str, str, Any, str]] = [
        (
            "pipe.yaml",
            "name: p\nsources:\n  n: {action: range}\nsinks: [{sink: collect}]\nname: q\n",
            headwater.load_pipeline,
            "pipe.yaml:5: name: duplicate key 'name' (first at line 1)",
        ),
        (
            "serve.yaml",
            "port: 0\nauth:\n  tokens: {abc: alice}\n  tokens: {abc: mallory}\n",
            load_server_config,
            "serve.yaml:4: auth.tokens: duplicate key 'tokens' (first at line 3)",
        ),
        (
            "jobs.yaml",
            "jobs:\n  a: {pipeline: x.yaml}\n  a: {pipeline: y.yaml}\n",
            load_jobs,
            "jobs.yaml:3: jobs.a: duplicate key 'a' (first at line 2)",
        ),
    ]
    for name, text, load, says in cases:
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(InvalidFileError) as info:
            load(path)
        assert str(info.value).endswith(f"\n  {tmp_path}/{says}")
