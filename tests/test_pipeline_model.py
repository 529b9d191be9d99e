"""The pipeline model: YAML loading, shape validation, resolution, overrides, builder.

Shape errors come from :func:`headwater.parse_pipeline` / :func:`headwater.load_pipeline`;
errors against the registered components come from :func:`headwater.core.pipeline.resolve`
(and :func:`headwater.core.api.prepare`). Every error names a path and the problem.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field

import headwater
from headwater.builtin_plugins import catalogue
from headwater.builtin_plugins import sources as builtin_sources
from headwater.builtin_plugins.catalogue import sinks as builtin_sinks
from headwater.builtin_plugins.catalogue import transformers as builtin_transformers
from headwater.core.api import prepare
from headwater.core.pipeline import ResolvedPipeline, format_loc, resolve
from headwater.hookspecs import Register

# ---------------------------------------------------------------------------------------
# A registry to resolve against: the built-ins plus a demo plugin with richer params
# ---------------------------------------------------------------------------------------


class RegexParams(BaseModel):
    """Params of ``demo.regex``."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(min_length=1)
    group: int = 0


class BatchParams(BaseModel):
    """Params of ``demo.batch``."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(ge=1)


@headwater.transformer("demo.regex", kind="filter", params=RegexParams)
def regex(item: str, params: RegexParams) -> bool:
    """Keep items matching ``pattern``."""
    return params.pattern in item


@headwater.transformer("demo.batch", kind="batch", params=BatchParams)
def batch(params: BatchParams) -> Any:
    """Pass batches through."""
    return lambda items: items


@headwater.transformer("demo.upper")
def upper(item: str) -> str:
    """Upper-case each item (no params)."""
    return item.upper()


@headwater.action("demo.lines")
async def lines(ctx: headwater.StreamContext) -> AsyncIterator[str]:
    """Yield two lines."""
    yield "a"
    yield "b"


class DemoPlugin:
    @headwater.hookimpl
    def register_actions(self, register: Register) -> None:
        register(lines)

    @headwater.hookimpl
    def register_transformers(self, register: Register) -> None:
        register(regex)
        register(batch)
        register(upper)


@pytest.fixture(scope="module")
def pm() -> headwater.PluginManager:
    manager = headwater.PluginManager(load_entry_points=False, strict=True)
    manager.register(catalogue.sources, "headwater.sources", distribution="headwater")
    manager.register(builtin_transformers, "headwater.transformers", distribution="headwater")
    manager.register(builtin_sinks, "headwater.sinks", distribution="headwater")
    manager.register(DemoPlugin(), "demo", distribution="hw-demo", version="1.0")
    return manager


PIPELINE_YAML = """\
name: errors-live
description: keep the errors
sources:
  app:   {action: range, params: {stop: 10}}
  audit: {action: demo.lines}
compose: {merge: [app, audit]}
steps:
  - {transformer: map, params: {fn: "builtins:str"}}
  - {transformer: demo.regex, params: {pattern: "1"}, on_error: skip, name: only-ones}
  - {transformer: demo.batch, params: {size: 100}, on_error: retry, retry: {attempts: 5}}
sinks:
  - {sink: collect}
  - {sink: "null", name: counter}
timeouts: {total: 30}
batch_size: 64
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def minimal(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "p",
        "sources": {"nums": {"action": "range", "params": {"stop": 3}}},
        "sinks": [{"sink": "collect"}],
    }
    data.update(extra)
    return data


def issues_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.parse_pipeline(data)
    return [(i.path, i.message) for i in info.value.issues]


def resolve_issues(data: dict[str, Any], pm: headwater.PluginManager) -> list[tuple[str, str]]:
    spec = headwater.parse_pipeline(data)
    with pytest.raises(headwater.PipelineValidationError) as info:
        resolve(spec, pm)
    return [(i.path, i.message) for i in info.value.issues]


# ---------------------------------------------------------------------------------------
# Loading YAML
# ---------------------------------------------------------------------------------------


def test_load_pipeline_reads_every_section(tmp_path: Path) -> None:
    spec = headwater.load_pipeline(write(tmp_path, PIPELINE_YAML))

    assert spec.name == "errors-live"
    assert spec.description == "keep the errors"
    assert list(spec.sources) == ["app", "audit"]
    assert spec.sources["app"].action == "range"
    assert spec.sources["app"].params == {"stop": 10}
    assert spec.sources["audit"].params == {}
    assert spec.compose is not None
    assert spec.compose.mode == "merge"
    assert spec.source_order() == ["app", "audit"]
    assert [s.transformer for s in spec.steps] == ["map", "demo.regex", "demo.batch"]
    assert [s.on_error for s in spec.steps] == ["fail", "skip", "retry"]
    assert spec.steps[1].name == "only-ones"
    assert spec.steps[2].retry.attempts == 5
    assert spec.steps[0].retry == headwater.RetryPolicy()
    # unquoted, YAML reads ``null`` as None: the built-in ``null`` sink needs quotes
    assert [s.sink for s in spec.sinks] == ["collect", "null"]
    assert spec.sinks[1].name == "counter"
    assert spec.timeouts.total == 30
    assert spec.timeouts.idle is None
    assert spec.batch_size == 64
    assert spec.buffer == 4
    assert spec.plugins.disable == []


def test_loaded_pipeline_resolves_and_runs(tmp_path: Path, pm: headwater.PluginManager) -> None:
    spec = headwater.load_pipeline(write(tmp_path, PIPELINE_YAML))
    resolved = resolve(spec, pm)
    assert isinstance(resolved, ResolvedPipeline)
    assert [s.stage for s in resolved.steps] == ["steps[0].map", "only-ones", "steps[2].demo.batch"]
    assert [s.stage for s in resolved.sinks] == ["sinks.collect", "sinks.counter"]
    assert isinstance(resolved.steps[1].params, RegexParams)

    result = headwater.run_sync(spec, plugins=pm)
    assert sorted(result.outputs["collect"]) == ["1"]
    assert result.outputs["counter"] == 1


def test_compose_modes_and_defaults() -> None:
    for mode in ("merge", "zip", "concat"):
        spec = headwater.parse_pipeline(
            minimal(
                sources={"a": {"action": "range"}, "b": {"action": "range"}},
                compose={mode: ["b", "a"]},
            )
        )
        assert spec.compose is not None
        assert spec.compose.mode == mode
        assert spec.source_order() == ["b", "a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed\n", "not valid YAML: expected ',' or ']'"),
        ("- just\n- a list\n", "a pipeline must be a mapping, got list"),
        ("", "a pipeline must be a mapping, got NoneType"),
    ],
)
def test_load_pipeline_reports_unreadable_documents(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.load_pipeline(path)
    [issue] = info.value.issues
    assert message in issue.message
    assert info.value.source == str(path)
    assert f"invalid pipeline in {path} (1 problem)" in str(info.value)


def test_load_pipeline_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(headwater.PipelineValidationError, match=r"cannot read .*nope\.yaml"):
        headwater.load_pipeline(tmp_path / "nope.yaml")
    with pytest.raises(headwater.PipelineValidationError, match="cannot read"):
        headwater.load_pipeline(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfename: x\n")
    with pytest.raises(headwater.PipelineValidationError, match="not UTF-8 text"):
        headwater.load_pipeline(binary)


@settings(max_examples=200, deadline=None)
@given(text=st.text(st.sampled_from("ab:-[]{}, \n\t'\"!&*#|>%@`0.1?"), max_size=40))
def test_arbitrary_yaml_text_only_ever_raises_validation_errors(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.mktemp("yaml") / "p.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        headwater.load_pipeline(path)
    except headwater.PipelineValidationError as exc:
        error = exc
    else:
        return
    assert error.issues


# ---------------------------------------------------------------------------------------
# Shape errors
# ---------------------------------------------------------------------------------------


def test_shape_error_paths_name_list_index_and_key() -> None:
    data = minimal(
        steps=[
            {"transformer": "map"},
            {"transformer": "map"},
            {"transformer": "demo.regex", "params": "ERROR"},
        ]
    )
    assert issues_of(data) == [("steps[2].params", "Input should be a valid dictionary")]


def test_unknown_keys_are_reported_with_their_path() -> None:
    data = minimal(
        bogus=1,
        steps=[{"transformer": "map", "paramz": {}}],
        sinks=[{"sink": "collect", "retry": {"attempts": 2, "tries": 3}}],
    )
    assert sorted(issues_of(data)) == [
        ("bogus", "unknown key"),
        ("sinks[0].retry.tries", "unknown key"),
        ("steps[0].paramz", "unknown key; did you mean 'params'?"),
    ]


def test_missing_keys_are_reported_with_their_path() -> None:
    data = {"sources": {"a": {"params": {}}}, "steps": [{}]}
    assert sorted(issues_of(data)) == [
        ("name", "required key is missing"),
        ("sinks", "required key is missing"),
        ("sources.a.action", "required key is missing"),
        ("steps[0].transformer", "required key is missing"),
    ]


def test_bad_values_are_reported_with_their_path() -> None:
    data = minimal(
        batch_size=0,
        steps=[{"transformer": "map", "on_error": "explode"}],
        timeouts={"idle": -1},
    )
    found = dict(issues_of(data))
    assert set(found) == {"batch_size", "steps[0].on_error", "timeouts.idle"}
    assert "'fail', 'skip' or 'retry'" in found["steps[0].on_error"]
    assert "greater than 0" in found["batch_size"]


def test_empty_sources_and_sinks_are_rejected() -> None:
    paths = {path for path, _ in issues_of(minimal(sources={}, sinks=[]))}
    assert paths == {"sources", "sinks"}


def test_several_sources_need_a_compose() -> None:
    data = minimal(sources={"a": {"action": "range"}, "b": {"action": "range"}})
    [(path, message)] = issues_of(data)
    assert (path, message) == ("compose", "2 sources need a compose (merge, zip or concat)")


def test_compose_referencing_unknown_sources() -> None:
    data = minimal(
        sources={"a": {"action": "range"}, "b": {"action": "range"}},
        compose={"merge": ["a", "c"]},
    )
    [(path, message)] = issues_of(data)
    assert (path, message) == ("compose.merge", "names unknown source(s) 'c'; sources are 'a', 'b'")


def test_compose_must_use_every_source() -> None:
    data = minimal(
        sources={"a": {"action": "range"}, "b": {"action": "range"}},
        compose={"zip": ["a"]},
    )
    [(_, message)] = issues_of(data)
    assert message == "source(s) 'b' not used by compose"


@pytest.mark.parametrize(
    ("compose", "message"),
    [
        ({}, "compose needs exactly one of merge, zip or concat"),
        ({"merge": ["a"], "zip": ["a"]}, "got merge, zip"),
        ({"concat": []}, "compose.concat needs at least one source name"),
        ({"merge": ["a", "a"]}, "compose.merge names a source more than once"),
    ],
)
def test_compose_shape(compose: dict[str, Any], message: str) -> None:
    data = minimal(sources={"a": {"action": "range"}}, compose=compose)
    [(path, found)] = issues_of(data)
    assert path == "compose"
    assert message in found


def test_error_message_lists_every_problem() -> None:
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.parse_pipeline({"name": "", "sources": {}, "extra": 1}, source="p.yaml")
    text = str(info.value)
    assert text.startswith("invalid pipeline in p.yaml (4 problems):\n")
    for path in ("name", "sources", "sinks", "extra"):
        assert f"\n  {path}: " in text
    assert "Traceback" not in text


def test_format_loc() -> None:
    assert format_loc(("steps", 2, "params", "pattern")) == "steps[2].params.pattern"
    assert format_loc(("sources", "x", "params", "stop")) == "sources.x.params.stop"
    assert format_loc(()) == ""


# ---------------------------------------------------------------------------------------
# Resolution against the registry
# ---------------------------------------------------------------------------------------


def test_unknown_component_names_suggest_close_matches(pm: headwater.PluginManager) -> None:
    data = minimal(
        sources={"x": {"action": "rnage", "params": {"stop": 3}}},
        steps=[{"transformer": "demo.regx", "params": {"pattern": "a"}}],
        sinks=[{"sink": "colect"}],
    )
    issues = resolve_issues(data, pm)
    assert [path for path, _ in issues] == [
        "sources.x.action",
        "steps[0].transformer",
        "sinks[0].sink",
    ]
    assert issues[0][1] == "no action 'rnage'; did you mean 'range'?"
    assert issues[1][1].startswith("no transformer 'demo.regx'; did you mean 'demo.regex'")
    assert issues[2][1] == "no sink 'colect'; did you mean 'collect'?"


def test_unknown_name_without_close_match(pm: headwater.PluginManager) -> None:
    data = minimal(sources={"x": {"action": "kafka.topic"}})
    assert resolve_issues(data, pm) == [("sources.x.action", "no action 'kafka.topic'")]


def test_params_are_validated_against_the_component_model(pm: headwater.PluginManager) -> None:
    data = minimal(sources={"x": {"action": "range", "params": {"stop": "ten"}}})
    [(path, message)] = resolve_issues(data, pm)
    assert path == "sources.x.params.stop"
    assert "valid integer" in message


def test_every_resolution_problem_is_reported_at_once(pm: headwater.PluginManager) -> None:
    data = minimal(
        sources={"x": {"action": "range", "params": {"start": 1}}},
        steps=[
            {"transformer": "map", "params": {"fn": "builtins:str"}},
            {"transformer": "demo.upper", "params": {"shout": True}},
            {"transformer": "demo.regex", "params": {"pattern": "", "flags": "i"}},
        ],
        sinks=[{"sink": "collect", "name": "out"}, {"sink": "null", "name": "out"}],
        dead_letter={"sink": "dlq"},
    )
    issues = resolve_issues(data, pm)
    paths = [path for path, _ in issues]
    assert paths == [
        "sources.x.params.stop",
        "steps[1].params",
        "steps[2].params.pattern",
        "steps[2].params.flags",
        "sinks[1].name",
        "dead_letter.sink",
    ]
    messages = dict(issues)
    assert messages["sources.x.params.stop"] == "required key is missing"
    assert messages["steps[1].params"] == "transformer 'demo.upper' takes no params, got shout"
    assert messages["steps[2].params.flags"] == "unknown key"
    assert messages["sinks[1].name"] == "duplicate sink name 'out'"


def test_unnamed_sinks_of_the_same_type_get_distinct_stage_names(
    pm: headwater.PluginManager,
) -> None:
    spec = headwater.parse_pipeline(minimal(sinks=[{"sink": "collect"}, {"sink": "collect"}]))
    resolved = resolve(spec, pm)
    assert [s.stage for s in resolved.sinks] == ["sinks.collect", "sinks.collect[1]"]


def test_resolve_accepts_a_registry_as_well(pm: headwater.PluginManager) -> None:
    spec = headwater.parse_pipeline(minimal())
    assert resolve(spec, pm.registry).sources["nums"].component.name == "range"


def test_prepare_reports_resolution_errors(pm: headwater.PluginManager) -> None:
    data = minimal(sources={"x": {"action": "rnage", "params": {"stop": 3}}})
    with pytest.raises(headwater.PipelineValidationError, match="did you mean 'range'"):
        prepare(data, pm)
    resolved, manager = prepare(minimal(), pm)
    assert manager is pm
    assert resolved.sources["nums"].params == builtin_sources.RangeParams(stop=3)


def test_prepare_with_the_default_manager(tmp_path: Path) -> None:
    path = write(tmp_path, "name: p\nsources: {x: {action: rnage}}\nsinks: [{sink: collect}]\n")
    with pytest.raises(headwater.PipelineValidationError) as info:
        prepare(path)
    assert info.value.source == str(path)
    assert [i.path for i in info.value.issues] == ["sources.x.action"]


# ---------------------------------------------------------------------------------------
# --set overrides
# ---------------------------------------------------------------------------------------


def test_overrides_set_nested_values(tmp_path: Path) -> None:
    path = write(tmp_path, PIPELINE_YAML)
    spec = headwater.load_pipeline(
        path,
        {
            "steps[2].params.size": 5,
            "sources.app.params.stop": 3,
            "steps.1.on_error": "fail",
            "timeouts.idle": 2.5,
            "sources.app.params.start": 1,
        },
    )
    assert spec.steps[2].params == {"size": 5}
    assert spec.sources["app"].params == {"stop": 3, "start": 1}
    assert spec.steps[1].on_error == "fail"
    assert spec.timeouts.idle == 2.5


def test_override_replacing_a_scalar_with_a_mapping_is_caught_by_validation(
    tmp_path: Path,
) -> None:
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.load_pipeline(write(tmp_path, PIPELINE_YAML), {"name.first": "x"})
    assert [(i.path, i.message) for i in info.value.issues] == [
        ("name", "Input should be a valid string")
    ]


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, PIPELINE_YAML)
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.load_pipeline(path, {"batch_size": -1, "steps[0].colour": "red"})
    assert sorted(i.path for i in info.value.issues) == ["batch_size", "steps[0].colour"]


@pytest.mark.parametrize(
    ("key", "path", "message"),
    [
        ("steps[9].params.size", "steps[9]", "index out of range"),
        ("steps.¹.x", "steps.¹", "cannot --set inside this value"),
        ("steps.first.x", "steps.first", "cannot --set inside this value"),
        ("steps..x", "steps..x", "not a valid --set path"),
        ("steps[9]", "steps[9]", "cannot --set this path"),
    ],
)
def test_bad_override_paths(tmp_path: Path, key: str, path: str, message: str) -> None:
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.load_pipeline(write(tmp_path, PIPELINE_YAML), {key: 1})
    [issue] = info.value.issues
    assert issue.path == path
    assert message in issue.message


# ---------------------------------------------------------------------------------------
# Builder and schema
# ---------------------------------------------------------------------------------------


def test_builder_equals_the_yaml_model(tmp_path: Path) -> None:
    built = (
        headwater.Pipeline("errors-live", description="keep the errors", batch_size=64)
        .source("range", name="app", stop=10)
        .source("demo.lines", name="audit")
        .merge()
        .map("builtins:str")
        .step("demo.regex", pattern="1", on_error="skip", name="only-ones")
        .step("demo.batch", size=100, on_error="retry", retry={"attempts": 5})
        .sink("collect")
        .sink("null", name="counter")
        .timeouts(total=30)
        .build()
    )
    assert built == headwater.load_pipeline(write(tmp_path, PIPELINE_YAML))
    assert built.fingerprint() == headwater.load_pipeline(tmp_path / "pipeline.yaml").fingerprint()


def test_builder_validates_the_shape() -> None:
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.Pipeline("p").source("range", stop=1).build()
    assert [i.path for i in info.value.issues] == ["sinks"]


def test_builder_runs(pm: headwater.PluginManager) -> None:
    result = (
        headwater.Pipeline("evens")
        .source("range", stop=10)
        .filter(lambda x: x % 2 == 0)
        .sink("collect")
        .run_sync(plugins=pm)
    )
    assert result.output == [0, 2, 4, 6, 8]


def test_json_schema() -> None:
    schema = headwater.PipelineSpec.model_json_schema()
    json.dumps(schema)  # serialisable
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "sources", "sinks"}
    assert {"name", "sources", "compose", "steps", "sinks", "timeouts", "plugins"} <= set(
        schema["properties"]
    )
    step = schema["$defs"]["StepSpec"]
    assert step["additionalProperties"] is False
    assert step["properties"]["transformer"]["description"]
    assert step["properties"]["on_error"]["enum"] == ["fail", "skip", "retry"]


def test_fingerprint_covers_sources_and_steps_only() -> None:
    a = headwater.parse_pipeline(minimal())
    b = headwater.parse_pipeline(
        minimal(description="x", plugins={"disable": ["p"]}, batch_size=7, sinks=[{"sink": "x"}])
    )
    c = headwater.parse_pipeline(minimal(sources={"nums": {"action": "range", "params": {}}}))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


# ---------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------

KNOWN_KEYS = [
    "name", "description", "sources", "compose", "steps", "sinks", "dead_letter",
    "timeouts", "batch_size", "buffer", "plugins", "action", "params", "transformer",
    "sink", "on_error", "retry", "merge", "zip", "concat", "attempts", "then", "disable",
    "first_item", "idle", "total",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(["range", "collect", "merge", "fail", "skip", "retry", "a", "b"])
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=6)
anything = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(keys | st.integers(), children, max_size=5)
    ),
    max_leaves=30,
)
# Mostly well-shaped mappings: right keys, random values, so validation runs deep.
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "name": anything,
        "sources": st.dictionaries(
            st.text(max_size=4),
            st.fixed_dictionaries({}, optional={"action": anything, "params": anything}),
            max_size=3,
        )
        | anything,
        "compose": st.dictionaries(st.sampled_from(["merge", "zip", "concat"]), anything)
        | anything,
        "steps": st.lists(st.dictionaries(keys, anything, max_size=4), max_size=3) | anything,
        "sinks": st.lists(st.dictionaries(keys, anything, max_size=4), max_size=3) | anything,
        "timeouts": st.dictionaries(keys, anything, max_size=3) | anything,
        "batch_size": anything,
        "plugins": anything,
        "bogus": anything,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=anything | near_valid)
def test_random_input_only_ever_raises_validation_errors(data: Any) -> None:
    try:
        spec = headwater.parse_pipeline(data)
    except headwater.PipelineValidationError as exc:
        error = exc
    else:
        assert isinstance(spec, headwater.PipelineSpec)
        return
    assert error.issues
    assert all(isinstance(i.path, str) and i.message for i in error.issues)
    assert str(error).startswith("invalid pipeline")


@settings(max_examples=100, deadline=None)
@given(
    data=anything | near_valid,
    overrides=st.dictionaries(
        # path-like keys, including digits int() rejects (superscripts) and accepts (٣)
        st.lists(st.sampled_from([*"ab0¹٣.[]_", *KNOWN_KEYS]), max_size=8).map("".join),
        anything,
    ),
)
def test_random_overrides_only_ever_raise_validation_errors(
    tmp_path_factory: pytest.TempPathFactory, data: Any, overrides: dict[str, Any]
) -> None:
    path = tmp_path_factory.mktemp("hyp") / "p.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    try:
        headwater.load_pipeline(path, overrides)
    except headwater.PipelineValidationError as exc:
        error = exc
    else:
        return
    assert error.issues


names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1,
                max_size=10)  # fmt: skip
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)  # JSON has no infinity
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=10,
)
params = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
policies = st.sampled_from(["fail", "skip", "retry"])
retry: st.SearchStrategy[dict[str, Any]] = st.builds(
    dict,
    attempts=st.integers(1, 10),
    backoff=st.floats(0, 10),
    factor=st.floats(1, 10),
    then=st.sampled_from(["fail", "skip"]),
)
positive = st.none() | st.floats(min_value=0.001, max_value=1e9)


@st.composite
def valid_specs(draw: st.DrawFn) -> dict[str, Any]:
    source_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    data: dict[str, Any] = {
        "name": draw(names),
        "description": draw(st.text(max_size=20)),
        "sources": {n: {"action": draw(names), "params": draw(params)} for n in source_names},
        "steps": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"transformer": names, "params": params, "on_error": policies},
                    optional={"name": names, "retry": retry},
                ),
                max_size=4,
            )
        ),
        "sinks": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"sink": names, "params": params},
                    optional={"name": names, "on_error": policies},
                ),
                min_size=1,
                max_size=3,
            )
        ),
        "timeouts": draw(st.fixed_dictionaries({"first_item": positive, "total": positive})),
        "batch_size": draw(st.integers(1, 65536)),
        "buffer": draw(st.integers(1, 1024)),
        "plugins": {"disable": draw(st.lists(names, max_size=2))},
    }
    if len(source_names) > 1 or draw(st.booleans()):
        mode = draw(st.sampled_from(["merge", "zip", "concat"]))
        data["compose"] = {mode: draw(st.permutations(source_names))}
    if draw(st.booleans()):
        data["dead_letter"] = {"sink": draw(names), "params": draw(params)}
    return data


@settings(max_examples=150, deadline=None)
@given(data=valid_specs())
def test_valid_specs_round_trip_through_yaml(data: dict[str, Any]) -> None:
    spec = headwater.parse_pipeline(data)
    # allow_unicode=False: PyYAML mangles an unquoted U+0085 (NEL) when it may emit it raw
    dumped = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    again = headwater.parse_pipeline(yaml.safe_load(dumped))
    assert again == spec
    assert again.fingerprint() == spec.fingerprint()
    # the builder-facing JSON dump round-trips too
    assert headwater.PipelineSpec.model_validate_json(spec.model_dump_json()) == spec


def test_infinite_timeout_survives_yaml() -> None:
    spec = headwater.parse_pipeline(minimal(timeouts={"total": math.inf}))
    again = headwater.parse_pipeline(yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))
    assert again.timeouts.total == math.inf
