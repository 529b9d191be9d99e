"""The built-in transformers, through the public pipeline API.

Async tests run on asyncio and trio (see conftest.py); the property tests drive whole
pipelines with ``run_sync``.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import headwater
from headwater.core.plugins import PluginManager

# ---------------------------------------------------------------------------------------
# helpers and test components
# ---------------------------------------------------------------------------------------

Step = tuple[str, dict[str, Any]]


def pipeline(items: Any, *steps: Step, batch_size: int = 256) -> headwater.Pipeline:
    """An ``iterable`` source, the given steps, a ``collect`` sink."""
    p = headwater.Pipeline("t", batch_size=batch_size).source("iterable", items=items)
    for name, params in steps:
        p = p.step(name, **params)
    return p.sink("collect")


def run(items: Any, *steps: Step, batch_size: int = 256) -> list[Any]:
    """Run ``items`` through ``steps`` and return what reached the sink."""
    result = pipeline(items, *steps, batch_size=batch_size).run_sync()
    assert result.state == "succeeded"
    out: list[Any] = result.output
    return out


def failure(items: Any, *steps: Step, batch_size: int = 256) -> headwater.StageError:
    """Run a pipeline expected to fail; return its first stage error."""
    with pytest.raises(headwater.PipelineFailed) as info:
        pipeline(items, *steps, batch_size=batch_size).run_sync()
    error = info.value.errors[0]
    assert isinstance(error, headwater.StageError)
    return error


def issues(items: Any, *steps: Step) -> dict[str, str]:
    """Validate a pipeline expected to be invalid; return its issues as path -> message."""
    with pytest.raises(headwater.PipelineValidationError) as info:
        pipeline(items, *steps).run_sync()
    return {issue.path: issue.message for issue in info.value.issues}


cleanup_log: list[str] = []


@headwater.action("tt.endless")
async def endless(ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Count without end; logs when it is closed."""
    i = 0
    try:
        while True:
            yield i
            i += 1
            if i % 100 == 0:
                await anyio.lowlevel.checkpoint()
    finally:
        cleanup_log.append("endless closed")


class BurstParams(BaseModel):
    bursts: list[list[Any]]
    pause: float = 0.3
    hold: bool = False


@headwater.action("tt.bursts", params=BurstParams)
async def bursts(params: BurstParams, ctx: headwater.StreamContext) -> AsyncIterator[Any]:
    """Yield each burst at once, pausing between bursts; with ``hold``, never end."""
    for i, burst in enumerate(params.bursts):
        if i:
            await anyio.sleep(params.pause)
        for item in burst:
            yield item
    if params.hold:
        await anyio.sleep_forever()


class TestSources:
    """A throwaway plugin contributing the sources above."""

    @staticmethod
    @headwater.hookimpl
    def register_actions(register: Any) -> None:
        register(endless)
        register(bursts)


@pytest.fixture
def pm() -> PluginManager:
    manager = PluginManager().load()
    assert manager.register(TestSources, "testplugin"), manager.failures
    return manager


def bursts_pipeline(
    chunks: list[list[Any]],
    *steps: Step,
    pause: float = 0.3,
    hold: bool = False,
    timeout: float = 10,
) -> headwater.Pipeline:
    p = headwater.Pipeline("timed").source("tt.bursts", bursts=chunks, pause=pause, hold=hold)
    for name, params in steps:
        p = p.step(name, **params)
    return p.sink("collect").timeouts(total=timeout)


def append_fold(acc: list[Any], item: Any) -> list[Any]:
    """A reduce function that mutates its accumulator (to check ``initial`` is copied)."""
    acc.append(item)
    return acc


def fail_on_three(acc: int, item: int) -> int:
    if item == 3:
        raise ValueError("three")
    return acc + item


# ---------------------------------------------------------------------------------------
# registration and metadata
# ---------------------------------------------------------------------------------------

BUILTIN = [
    "map",
    "filter",
    "select",
    "json.decode",
    "json.encode",
    "regex",
    "batch",
    "window",
    "reduce",
    "aggregate",
    "take",
    "skip",
    "dedupe",
    "throttle",
    "flatten",
]


def test_every_transformer_is_registered_with_metadata() -> None:
    pm = PluginManager().load()
    registered = pm.registry.names("transformer")
    for name in BUILTIN:
        assert name in registered
        meta = pm.registry.get("transformer", name).metadata()
        json.dumps(meta)  # discoverable and serialisable without running anything
        assert meta["plugin"].endswith("transformers")
        assert meta["description"]
        assert meta["output"]
        for field, schema in meta["params_schema"].get("properties", {}).items():
            assert schema.get("description"), f"{name}.{field} has no description"


def test_stateful_transformers_declare_it() -> None:
    pm = PluginManager().load()
    for name in ("batch", "window", "reduce", "aggregate", "take", "skip", "dedupe"):
        assert "stateful" in pm.registry.get("transformer", name).metadata()["capabilities"]


# ---------------------------------------------------------------------------------------
# map / filter
# ---------------------------------------------------------------------------------------


def test_map_and_filter() -> None:
    out = run(
        range(6),
        ("map", {"fn": lambda x: x * 10}),
        ("filter", {"fn": lambda x: x % 20 == 0}),
    )
    assert out == [0, 20, 40]


def test_map_accepts_an_import_path() -> None:
    assert run([-1, 2], ("map", {"fn": "operator:neg"})) == [1, -2]


# ---------------------------------------------------------------------------------------
# select
# ---------------------------------------------------------------------------------------

ROWS = [
    {"id": 1, "name": "a", "user": {"id": 7, "tags": ["x", "y"]}, "extra": True},
    {"id": 2, "name": "b", "user": {"id": 8, "tags": ["z"]}},
]


def test_select_keeps_fields_in_order() -> None:
    out = run(ROWS, ("select", {"fields": ["name", "id"]}))
    assert out == [{"name": "a", "id": 1}, {"name": "b", "id": 2}]
    assert list(out[0]) == ["name", "id"]


def test_select_rename_and_nested_paths() -> None:
    out = run(
        ROWS,
        ("select", {"fields": ["id"], "rename": {"uid": "user.id", "tag": "user.tags.0"}}),
    )
    assert out == [{"id": 1, "uid": 7, "tag": "x"}, {"id": 2, "uid": 8, "tag": "z"}]


def test_select_literal_dotted_key_wins() -> None:
    assert run([{"a.b": 1, "a": {"b": 2}}], ("select", {"fields": ["a.b"]})) == [{"a.b": 1}]


def test_select_does_not_alias_the_input() -> None:
    src = [{"a": 1, "b": 2}]
    out = run(src, ("select", {"fields": ["a"]}))
    out[0]["a"] = 99
    assert src == [{"a": 1, "b": 2}]


@pytest.mark.parametrize(
    ("missing", "expected"),
    [
        ("null", [{"id": 1, "extra": True}, {"id": 2, "extra": None}]),
        ("omit", [{"id": 1, "extra": True}, {"id": 2}]),
    ],
)
def test_select_missing_null_and_omit(missing: str, expected: list[Any]) -> None:
    assert run(ROWS, ("select", {"fields": ["id", "extra"], "missing": missing})) == expected


def test_select_missing_error_names_field_and_position() -> None:
    error = failure([*ROWS, *ROWS], ("select", {"fields": ["extra"]}), batch_size=1)
    assert error.position == 1
    assert error.stage == "steps[0].select"
    assert "extra" in str(error.cause)
    error = failure(ROWS, ("select", {"rename": {"t": "user.tags.5"}}))
    assert error.position == 0
    assert "user.tags.5" in str(error.cause)


def test_select_rejects_non_mapping_items() -> None:
    error = failure([{"a": 1}, [1, 2]], ("select", {"fields": ["a"]}))
    assert error.position == 1
    assert isinstance(error.cause, TypeError)
    assert "list" in str(error.cause)


def test_select_skip_policy_drops_bad_items() -> None:
    out = (
        headwater.Pipeline("t")
        .source("iterable", items=ROWS)
        .step("select", fields=["extra"], on_error="skip")
        .sink("collect")
        .run_sync()
    )
    assert out.output == [{"extra": True}]


@pytest.mark.parametrize(
    ("params", "path", "fragment"),
    [
        ({}, "steps[0].params", "needs fields, rename or expr"),
        ({"fields": ["a", "a"]}, "steps[0].params.fields", "more than once"),
        ({"fields": ["a"], "rename": {"a": "b"}}, "steps[0].params.rename", "overwrite"),
        ({"fields": ["a"], "missing": "drop"}, "steps[0].params.missing", "error"),
        ({"fields": [""]}, "steps[0].params.fields[0]", "at least 1"),
        ({"fields": ["a"], "bogus": 1}, "steps[0].params.bogus", "unknown key"),
    ],
)
def test_select_params_validation(params: dict[str, Any], path: str, fragment: str) -> None:
    found = issues([], ("select", params))
    assert path in found, found
    assert fragment in found[path]


# ---------------------------------------------------------------------------------------
# json.decode / json.encode
# ---------------------------------------------------------------------------------------


def test_json_decode_str_and_bytes() -> None:
    out = run(['{"a": 1}', b"[1, 2]", bytearray(b'"s"'), "null"], ("json.decode", {}))
    assert out == [{"a": 1}, [1, 2], "s", None]


def test_json_decode_error_position() -> None:
    error = failure(["1", "2", "{oops", "4"], ("json.decode", {}), batch_size=2)
    assert error.position == 2
    assert isinstance(error.cause, json.JSONDecodeError)


def test_json_decode_takes_no_params() -> None:
    found = issues([], ("json.decode", {"strict": True}))
    assert "takes no params" in found["steps[0].params"]


def test_json_encode_is_compact_and_keeps_unicode() -> None:
    out = run([{"b": 1, "a": [1, 2]}, "é", None], ("json.encode", {}))
    assert out == ['{"b":1,"a":[1,2]}', '"é"', "null"]


def test_json_encode_options() -> None:
    assert run([{"b": 1, "a": 2}], ("json.encode", {"sort_keys": True})) == ['{"a":2,"b":1}']
    assert run(["é"], ("json.encode", {"ensure_ascii": True})) == ['"\\u00e9"']
    assert run([{"s": {1}}], ("json.encode", {"default": "str"})) == ['{"s":"{1}"}']
    assert run([math.inf], ("json.encode", {"allow_nan": True})) == ["Infinity"]


def test_json_encode_errors_name_the_item() -> None:
    error = failure([1, {"x": object()}], ("json.encode", {}))
    assert error.position == 1
    assert isinstance(error.cause, TypeError)
    error = failure([1.0, math.nan], ("json.encode", {}))
    assert error.position == 1
    assert isinstance(error.cause, ValueError)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=5), inner, max_size=3)
            ),
            max_leaves=8,
        ),
        max_size=20,
    )
)
def test_json_encode_then_decode_round_trips(items: list[Any]) -> None:
    assert run(items, ("json.encode", {}), ("json.decode", {})) == items


# ---------------------------------------------------------------------------------------
# regex
# ---------------------------------------------------------------------------------------

LOG = ["ERROR disk full", "INFO ok", "ERROR fan", "error lowercase"]


def test_regex_named_groups_by_default() -> None:
    out = run(LOG, ("regex", {"pattern": r"ERROR (?P<msg>.*)"}))
    assert out == [{"msg": "disk full"}, {"msg": "fan"}]


def test_regex_without_named_groups_outputs_the_match() -> None:
    assert run(LOG, ("regex", {"pattern": r"ERROR \w+"})) == ["ERROR disk", "ERROR fan"]


def test_regex_output_item_and_keep_unmatched() -> None:
    assert run(LOG, ("regex", {"pattern": "fan|ok", "output": "item"})) == ["INFO ok", "ERROR fan"]
    out = run(LOG, ("regex", {"pattern": r"ERROR (?P<msg>.*)", "keep_unmatched": True}))
    assert out == [{"msg": "disk full"}, "INFO ok", {"msg": "fan"}, "error lowercase"]


def test_regex_modes_and_ignore_case() -> None:
    assert run(["xab", "ab", "abx"], ("regex", {"pattern": "ab", "mode": "match"})) == [
        "ab",
        "ab",
    ]
    assert run(["xab", "ab", "abx"], ("regex", {"pattern": "ab", "mode": "fullmatch"})) == ["ab"]
    out = run(LOG, ("regex", {"pattern": "^error", "ignore_case": True, "output": "item"}))
    assert out == ["ERROR disk full", "ERROR fan", "error lowercase"]


def test_regex_unmatched_optional_group_is_none() -> None:
    out = run(["a1", "a"], ("regex", {"pattern": r"a(?P<n>\d)?"}))
    assert out == [{"n": "1"}, {"n": None}]


def test_regex_on_a_field_with_merge() -> None:
    rows = [{"line": "GET /a 200"}, {"line": "garbage"}, {"line": "POST /b 500"}]
    pattern = r"(?P<method>\w+) (?P<path>\S+) (?P<status>\d+)"
    out = run(rows, ("regex", {"pattern": pattern, "field": "line", "output": "merge"}))
    assert out == [
        {"line": "GET /a 200", "method": "GET", "path": "/a", "status": "200"},
        {"line": "POST /b 500", "method": "POST", "path": "/b", "status": "500"},
    ]
    out = run(rows, ("regex", {"pattern": "500", "field": "line", "output": "item"}))
    assert out == [{"line": "POST /b 500"}]


def test_regex_errors_carry_positions() -> None:
    error = failure(["a", "b", 3, "d"], ("regex", {"pattern": "a"}))
    assert error.position == 2
    assert isinstance(error.cause, TypeError)
    error = failure([{"line": "a"}, {"other": "a"}], ("regex", {"pattern": "a", "field": "line"}))
    assert error.position == 1
    assert "line" in str(error.cause)


@pytest.mark.parametrize(
    ("params", "path", "fragment"),
    [
        ({"pattern": "ERROR (?P<msg>.*"}, "steps[0].params.pattern", "invalid regular expression"),
        ({"pattern": "(?P<1x>a)"}, "steps[0].params.pattern", "bad character in group name"),
        ({"pattern": "a", "output": "groups"}, "steps[0].params.output", "named groups"),
        ({"pattern": "(?P<a>a)", "output": "merge"}, "steps[0].params.output", "needs field"),
        ({"pattern": "a", "mode": "find"}, "steps[0].params.mode", "search"),
        ({}, "steps[0].params.pattern", "required"),
    ],
)
def test_regex_params_validation(params: dict[str, Any], path: str, fragment: str) -> None:
    found = issues([], ("regex", params))
    assert path in found, found
    assert fragment in found[path]


def test_regex_invalid_pattern_message_names_the_problem() -> None:
    found = issues([], ("regex", {"pattern": "ERROR (?P<msg>.*"}))
    assert found["steps[0].params.pattern"] == (
        "invalid regular expression: missing ), unterminated subpattern at position 6"
    )


# ---------------------------------------------------------------------------------------
# batch
# ---------------------------------------------------------------------------------------


def test_batch_by_size_flushes_the_last_partial_list() -> None:
    assert run(range(7), ("batch", {"size": 3})) == [[0, 1, 2], [3, 4, 5], [6]]
    assert run(range(6), ("batch", {"size": 3}), batch_size=1) == [[0, 1, 2], [3, 4, 5]]
    assert run([], ("batch", {"size": 3})) == []


def test_batch_feeds_later_steps() -> None:
    out = run(range(7), ("batch", {"size": 3}), ("map", {"fn": len}))
    assert out == [3, 3, 1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(), max_size=60),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=8),
)
def test_batch_invariants(items: list[int], size: int, chunk: int) -> None:
    out = run(items, ("batch", {"size": size}), batch_size=chunk)
    assert [x for b in out for x in b] == items
    assert all(len(b) == size for b in out[:-1])
    assert all(1 <= len(b) <= size for b in out)


@pytest.mark.anyio
async def test_batch_by_time_splits_at_pauses(pm: PluginManager) -> None:
    chunks = [[0, 1, 2], [3, 4], [5]]
    result = await bursts_pipeline(chunks, ("batch", {"seconds": 0.1})).run(plugins=pm)
    assert result.output == chunks


@pytest.mark.anyio
async def test_batch_size_or_time_whichever_first(pm: PluginManager) -> None:
    chunks = [[0, 1, 2, 3, 4], [5]]
    step = ("batch", {"size": 2, "seconds": 0.1})
    result = await bursts_pipeline(chunks, step).run(plugins=pm)
    assert result.output == [[0, 1], [2, 3], [4], [5]]


@pytest.mark.anyio
async def test_batch_time_flush_happens_while_the_source_is_idle(pm: PluginManager) -> None:
    # The source goes quiet forever after one burst: only the time flush (tick) can
    # emit the list, and take then stops the endless source.
    p = bursts_pipeline(
        [[1, 2, 3]], ("batch", {"seconds": 0.05}), ("take", {"count": 1}), hold=True, timeout=2
    )
    result = await p.run(plugins=pm)
    assert result.output == [[1, 2, 3]]


@pytest.mark.anyio
async def test_batch_time_flush_reaches_a_later_stage_while_idle(pm: PluginManager) -> None:
    # as above, with take in its own stage (behind a stream step)
    steps = [
        ("batch", {"seconds": 0.05}),
        ("throttle", {"rate": 1000}),
        ("take", {"count": 1}),
    ]
    result = await bursts_pipeline([[1, 2, 3]], *steps, hold=True, timeout=5).run(plugins=pm)
    assert result.output == [[1, 2, 3]]


@pytest.mark.parametrize(
    ("params", "path", "fragment"),
    [
        ({}, "steps[0].params", "batch needs size, seconds or both"),
        ({"size": 0}, "steps[0].params.size", "greater than or equal to 1"),
        ({"seconds": 0}, "steps[0].params.seconds", "greater than 0"),
        ({"size": "many"}, "steps[0].params.size", "integer"),
    ],
)
def test_batch_params_validation(params: dict[str, Any], path: str, fragment: str) -> None:
    found = issues([], ("batch", params))
    assert path in found, found
    assert fragment in found[path]


# ---------------------------------------------------------------------------------------
# window
# ---------------------------------------------------------------------------------------


def test_window_tumbling_count() -> None:
    assert run(range(7), ("window", {"size": 3})) == [[0, 1, 2], [3, 4, 5], [6]]
    assert run(range(7), ("window", {"size": 3, "partial": False})) == [[0, 1, 2], [3, 4, 5]]


def test_window_sliding_count() -> None:
    out = run(range(6), ("window", {"type": "sliding", "size": 3, "step": 1}))
    assert out == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]]
    # the incomplete window is emitted only when it holds items no window held
    out = run(range(6), ("window", {"type": "sliding", "size": 3, "step": 2}))
    assert out == [[0, 1, 2], [2, 3, 4], [4, 5]]
    assert run(range(2), ("window", {"type": "sliding", "size": 3, "step": 1})) == [[0, 1]]
    step = ("window", {"type": "sliding", "size": 3, "step": 1, "partial": False})
    assert run(range(2), step) == []


def test_window_sliding_with_gaps() -> None:
    out = run(range(10), ("window", {"type": "sliding", "size": 2, "step": 4}), batch_size=3)
    assert out == [[0, 1], [4, 5], [8, 9]]
    out = run(range(9), ("window", {"type": "sliding", "size": 2, "step": 4}), batch_size=1)
    assert out == [[0, 1], [4, 5], [8]]


def test_window_then_aggregate_per_item() -> None:
    out = run(
        range(1, 7),
        ("window", {"type": "sliding", "size": 3, "step": 1}),
        ("aggregate", {"op": "mean", "per_item": True}),
    )
    assert out == [2.0, 3.0, 4.0, 5.0]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(), max_size=50),
    st.integers(min_value=1, max_value=7),
    st.integers(min_value=1, max_value=6),
)
def test_window_tumbling_concatenation_is_the_input(
    items: list[int], size: int, chunk: int
) -> None:
    out = run(items, ("window", {"size": size}), batch_size=chunk)
    assert [x for w in out for x in w] == items
    assert all(len(w) == size for w in out[:-1])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(), max_size=40),
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=8),
    st.integers(min_value=1, max_value=6),
)
def test_window_sliding_matches_slices(items: list[int], size: int, step: int, chunk: int) -> None:
    params = {"type": "sliding", "size": size, "step": step, "partial": False}
    out = run(items, ("window", params), batch_size=chunk)
    expected = [items[i : i + size] for i in range(0, len(items) - size + 1, step)]
    assert out == expected
    with_partial = run(items, ("window", {**params, "partial": True}), batch_size=chunk)
    assert with_partial[: len(expected)] == expected
    extra = with_partial[len(expected) :]
    assert len(extra) <= 1
    covered = {i for s in range(0, len(items) - size + 1, step) for i in range(s, s + size)}
    in_windows = {
        i for s in range(0, len(items), step) for i in range(s, min(s + size, len(items)))
    }
    # every item that belongs to some window ends up in an emitted window
    if in_windows - covered:
        assert extra
        assert len(extra[0]) < size


@pytest.mark.anyio
async def test_window_tumbling_by_time(pm: PluginManager) -> None:
    chunks = [[0, 1], [2, 3, 4], [5]]
    step = ("window", {"seconds": 0.15})
    result = await bursts_pipeline(chunks, step, pause=0.3).run(plugins=pm)
    assert result.output == chunks


@pytest.mark.anyio
async def test_window_sliding_by_time(pm: PluginManager) -> None:
    # bursts at about t=0, 0.3, 0.6; 0.4 s windows starting every 0.3 s
    chunks = [["a"], ["b"], ["c"]]
    step = ("window", {"type": "sliding", "seconds": 0.4, "step": 0.3})
    result = await bursts_pipeline(chunks, step, pause=0.3).run(plugins=pm)
    assert result.output == [["a", "b"], ["b", "c"]]


@pytest.mark.anyio
async def test_window_by_time_is_emitted_while_the_source_is_idle(pm: PluginManager) -> None:
    p = bursts_pipeline(
        [[1, 2]], ("window", {"seconds": 0.05}), ("take", {"count": 1}), hold=True, timeout=2
    )
    result = await p.run(plugins=pm)
    assert result.output == [[1, 2]]


@pytest.mark.parametrize(
    ("params", "path", "fragment"),
    [
        ({}, "steps[0].params", "needs size"),
        ({"size": 3, "seconds": 1}, "steps[0].params.seconds", "not both"),
        ({"size": 3, "step": 1}, "steps[0].params.step", "sliding windows only"),
        ({"type": "sliding", "size": 3}, "steps[0].params", "needs step"),
        ({"type": "sliding", "size": 3, "step": 1.5}, "steps[0].params.step", "whole number"),
        ({"type": "hopping", "size": 3}, "steps[0].params.type", "tumbling"),
        ({"size": 0}, "steps[0].params.size", "greater than or equal to 1"),
        ({"seconds": -1}, "steps[0].params.seconds", "greater than 0"),
    ],
)
def test_window_params_validation(params: dict[str, Any], path: str, fragment: str) -> None:
    found = issues([], ("window", params))
    assert path in found, found
    assert fragment in found[path]


def test_window_sliding_time_step_may_be_fractional() -> None:
    step = ("window", {"type": "sliding", "seconds": 1, "step": 0.5})
    assert run([1, 2], step) == [[1, 2]]


# ---------------------------------------------------------------------------------------
# reduce
# ---------------------------------------------------------------------------------------


def test_reduce_with_and_without_initial() -> None:
    assert run(range(5), ("reduce", {"fn": "operator:add"})) == [10]
    assert run(range(5), ("reduce", {"fn": operator.add, "initial": 100})) == [110]
    assert run(["a", "b"], ("reduce", {"fn": operator.add, "initial": ""})) == ["ab"]


def test_reduce_empty_stream() -> None:
    assert run([], ("reduce", {"fn": operator.add})) == []
    assert run([], ("reduce", {"fn": operator.add, "initial": 0})) == [0]
    assert run([], ("reduce", {"fn": operator.add, "initial": None})) == [None]


def test_reduce_running() -> None:
    assert run([1, 2, 3], ("reduce", {"fn": operator.add, "emit": "running"})) == [1, 3, 6]
    step = ("reduce", {"fn": operator.add, "initial": 10, "emit": "running"})
    assert run([1, 2], step) == [11, 13]


def test_reduce_initial_is_copied_for_every_run() -> None:
    p = pipeline([1, 2], ("reduce", {"fn": append_fold, "initial": []}))
    assert p.run_sync().output == [[1, 2]]
    assert p.run_sync().output == [[1, 2]]


def test_reduce_error_position_and_skip() -> None:
    error = failure(range(6), ("reduce", {"fn": fail_on_three}), batch_size=2)
    assert error.position == 3
    assert str(error.cause) == "three"
    result = (
        headwater.Pipeline("t")
        .source("iterable", items=range(6))
        .step("reduce", fn=fail_on_three, on_error="skip")
        .sink("collect")
        .run_sync()
    )
    assert result.output == [0 + 1 + 2 + 4 + 5]
    assert result.summary["stages"]["steps[0].reduce"]["skipped"] == 1


def test_reduce_params_validation() -> None:
    found = issues([], ("reduce", {"fn": "operator:no_such_function"}))
    assert "steps[0].params.fn" in found
    found = issues([], ("reduce", {"fn": operator.add, "emit": "sometimes"}))
    assert "steps[0].params.emit" in found


# ---------------------------------------------------------------------------------------
# aggregate
# ---------------------------------------------------------------------------------------

SALES = [
    {"shop": "a", "amount": 3},
    {"shop": "b", "amount": 10},
    {"shop": "a", "amount": 5},
    {"shop": "c", "amount": None},
]


@pytest.mark.parametrize(
    ("op", "expected", "empty"),
    [
        ("count", 4, 0),
        ("sum", 10, 0),
        ("min", 1, None),
        ("max", 4, None),
        ("mean", 2.5, None),
    ],
)
def test_aggregate_ops(op: str, expected: Any, empty: Any) -> None:
    assert run([1, 2, 3, 4], ("aggregate", {"op": op})) == [expected]
    assert run([], ("aggregate", {"op": op})) == [empty]


def test_aggregate_field_and_by() -> None:
    rows = SALES[:3]
    assert run(rows, ("aggregate", {"op": "sum", "field": "amount"})) == [18]
    out = run(rows, ("aggregate", {"op": "sum", "field": "amount", "by": "shop"}))
    assert out == [{"a": 8, "b": 10}]
    assert list(out[0]) == ["a", "b"]  # first-seen order
    assert run(rows, ("aggregate", {"op": "count", "by": "shop"})) == [{"a": 2, "b": 1}]
    out = run(rows, ("aggregate", {"op": "mean", "field": "amount", "by": "shop"}))
    assert out == [{"a": 4.0, "b": 10.0}]
    assert run([], ("aggregate", {"op": "sum", "by": "shop"})) == [{}]


def test_aggregate_missing_values() -> None:
    error = failure(SALES, ("aggregate", {"op": "sum", "field": "amount"}))
    assert error.position == 3
    assert "amount" in str(error.cause)
    step = ("aggregate", {"op": "sum", "field": "amount", "missing": "skip"})
    assert run([*SALES, {"shop": "d"}], step) == [18]
    step = ("aggregate", {"op": "count", "field": "amount", "by": "shop", "missing": "skip"})
    assert run(SALES, step) == [{"a": 2, "b": 1}]
    error = failure([{"amount": 1}, {"x": 1}], ("aggregate", {"op": "count", "by": "shop"}))
    assert error.position == 0


def test_aggregate_bad_value_position() -> None:
    error = failure([1, 2, "three", 4], ("aggregate", {"op": "sum"}), batch_size=3)
    assert error.position == 2
    assert isinstance(error.cause, TypeError)


def test_aggregate_running() -> None:
    assert run([1, 2, 3], ("aggregate", {"op": "sum", "emit": "running"})) == [1, 3, 6]
    step = ("aggregate", {"op": "max", "field": "amount", "by": "shop", "emit": "running"})
    out = run(SALES[:3], step)
    assert out == [{"a": 3}, {"b": 10}, {"a": 5}]
    merged: dict[str, Any] = {}
    for update in out:
        merged.update(update)
    assert (
        merged == run(SALES[:3], ("aggregate", {"op": "max", "field": "amount", "by": "shop"}))[0]
    )


def test_aggregate_per_item() -> None:
    windows = [[1, 2, 3], [], [10]]
    assert run(windows, ("aggregate", {"op": "sum", "per_item": True})) == [6, 0, 10]
    assert run(windows, ("aggregate", {"op": "mean", "per_item": True})) == [2.0, None, 10.0]
    assert run(windows, ("aggregate", {"op": "count", "per_item": True})) == [3, 0, 1]
    assert run([(5, 1)], ("aggregate", {"op": "min", "per_item": True})) == [1]
    step = (
        "aggregate",
        {"op": "sum", "field": "amount", "by": "shop", "per_item": True, "missing": "skip"},
    )
    assert run([SALES, SALES[:1]], step) == [{"a": 8, "b": 10}, {"a": 3}]
    step = ("aggregate", {"op": "sum", "field": "amount", "per_item": True, "missing": "skip"})
    assert run([SALES], step) == [18]


def test_aggregate_per_item_error_position() -> None:
    error = failure([[1], [2], 3], ("aggregate", {"op": "sum", "per_item": True}))
    assert error.position == 2


@pytest.mark.parametrize(
    ("params", "path", "fragment"),
    [
        ({}, "steps[0].params.op", "required"),
        ({"op": "median"}, "steps[0].params.op", "'count'"),
        ({"op": "sum", "per_item": True, "emit": "running"}, "steps[0].params.emit", "per_item"),
        ({"op": "sum", "field": ""}, "steps[0].params.field", "at least 1"),
        ({"op": "sum", "missing": "zero"}, "steps[0].params.missing", "'skip'"),
    ],
)
def test_aggregate_params_validation(params: dict[str, Any], path: str, fragment: str) -> None:
    found = issues([], ("aggregate", params))
    assert path in found, found
    assert fragment in found[path]


# ---------------------------------------------------------------------------------------
# take / skip
# ---------------------------------------------------------------------------------------


def test_take_and_skip() -> None:
    assert run(range(10), ("take", {"count": 3})) == [0, 1, 2]
    assert run(range(10), ("take", {"count": 3}), batch_size=2) == [0, 1, 2]
    assert run(range(2), ("take", {"count": 3})) == [0, 1]
    assert run(range(10), ("take", {"count": 0})) == []
    assert run(range(5), ("skip", {"count": 3})) == [3, 4]
    assert run(range(5), ("skip", {"count": 3}), batch_size=1) == [3, 4]
    assert run(range(5), ("skip", {"count": 9})) == []
    assert run(range(5), ("skip", {"count": 0})) == [0, 1, 2, 3, 4]
    assert run(range(10), ("skip", {"count": 2}), ("take", {"count": 3})) == [2, 3, 4]


@pytest.mark.anyio
async def test_take_stops_an_endless_source(pm: PluginManager) -> None:
    cleanup_log.clear()
    result = await (
        headwater.Pipeline("endless")
        .source("tt.endless")
        .step("map", fn=lambda x: x * 2)
        .step("take", count=5)
        .sink("collect")
        .timeouts(total=10)
        .run(plugins=pm)
    )
    assert result.state == "succeeded"
    assert result.output == [0, 2, 4, 6, 8]
    assert cleanup_log == ["endless closed"]


@pytest.mark.anyio
async def test_take_after_a_stream_step_stops_an_endless_source(pm: PluginManager) -> None:
    cleanup_log.clear()
    result = await (
        headwater.Pipeline("endless")
        .source("tt.endless")
        .step("throttle", rate=1_000_000, burst=1_000_000)
        .step("take", count=3)
        .sink("collect")
        .timeouts(total=10)
        .run(plugins=pm)
    )
    assert result.output == [0, 1, 2]
    assert cleanup_log == ["endless closed"]


@pytest.mark.parametrize("name", ["take", "skip"])
def test_take_skip_params_validation(name: str) -> None:
    assert (
        "greater than or equal to 0" in issues([], (name, {"count": -1}))["steps[0].params.count"]
    )
    assert "required" in issues([], (name, {}))["steps[0].params.count"]


# ---------------------------------------------------------------------------------------
# dedupe
# ---------------------------------------------------------------------------------------


def test_dedupe_whole_items_including_unhashable() -> None:
    assert run([1, 2, 1, 3, 2], ("dedupe", {})) == [1, 2, 3]
    items = [{"a": [1, 2]}, {"a": [1, 2]}, {"a": (1, 2)}, [1, {2}], [1, {2}], "x"]
    assert run(items, ("dedupe", {})) == [{"a": [1, 2]}, {"a": (1, 2)}, [1, {2}], "x"]


def test_dedupe_by_key() -> None:
    rows = [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}, {"id": 1, "v": "c"}]
    assert run(rows, ("dedupe", {"key": "id"})) == rows[:2]
    nested = [{"u": {"id": [1]}}, {"u": {"id": [1]}}, {"u": {"id": [2]}}]
    assert run(nested, ("dedupe", {"key": "u.id"})) == [nested[0], nested[2]]


def test_dedupe_forgets_the_least_recently_seen() -> None:
    # max_keys=2: seeing 1 again refreshes it, so 2 is the one forgotten when 3 arrives
    out = run([1, 2, 1, 3, 2, 1], ("dedupe", {"max_keys": 2}))
    assert out == [1, 2, 3, 2, 1]


def test_dedupe_missing_key_position() -> None:
    error = failure([{"id": 1}, {"id": 1}, {"x": 1}], ("dedupe", {"key": "id"}))
    assert error.position == 2
    assert "id" in str(error.cause)


def test_dedupe_params_validation() -> None:
    assert "steps[0].params.max_keys" in issues([], ("dedupe", {"max_keys": 0}))
    assert "steps[0].params.key" in issues([], ("dedupe", {"key": ""}))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=8), max_size=60),
    st.integers(min_value=1, max_value=10),
    st.integers(min_value=1, max_value=5),
)
def test_dedupe_invariants(items: list[int], max_keys: int, chunk: int) -> None:
    unbounded = run(items, ("dedupe", {}), batch_size=chunk)
    assert unbounded == list(dict.fromkeys(items))
    bounded = run(items, ("dedupe", {"max_keys": max_keys}), batch_size=chunk)
    # the first occurrence of every value always passes, in order
    assert list(dict.fromkeys(bounded)) == list(dict.fromkeys(items))
    # a value passes again only after max_keys other distinct values were seen since
    last_seen: dict[int, int] = {}
    out = iter(bounded)
    for i, x in enumerate(items):
        recent = {y for y in items[last_seen[x] + 1 : i]} if x in last_seen else None
        passes = recent is None or len(recent - {x}) >= max_keys
        if passes:
            assert next(out) == x
        last_seen[x] = i
    assert next(out, None) is None


# ---------------------------------------------------------------------------------------
# throttle
# ---------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_throttle_spaces_items() -> None:
    started = anyio.current_time()
    result = await pipeline(range(6), ("throttle", {"rate": 50})).run()
    elapsed = anyio.current_time() - started
    assert result.output == list(range(6))
    assert elapsed >= 5 / 50 * 0.9  # five waits of 1/rate (a lower bound, never an upper)


def throttled_times(count: int, rate: float, burst: int) -> list[float]:
    """When each of ``count`` items leaves ``throttle``, on trio's virtual clock (exact,
    whatever the machine's load)."""
    import trio
    from trio.testing import MockClock

    from headwater.builtin_plugins.transformers.streamwise import (
        ThrottleParams,
        throttle_transformer,
    )

    async def main() -> list[float]:
        async def items() -> AsyncIterator[int]:
            for i in range(count):
                yield i

        start = trio.current_time()
        params = ThrottleParams(rate=rate, burst=burst)
        return [
            trio.current_time() - start
            async for _ in throttle_transformer.obj(items(), params, None)
        ]

    return trio.run(main, clock=MockClock(autojump_threshold=0))


def test_throttle_burst_lets_items_through_at_once() -> None:
    # three pass at once, then one every 1/rate
    assert throttled_times(5, rate=20, burst=3) == pytest.approx([0, 0, 0, 0.05, 0.10])
    # without a burst, every item after the first waits one interval
    assert throttled_times(4, rate=20, burst=1) == pytest.approx([0, 0.05, 0.10, 0.15])


def test_throttle_params_validation() -> None:
    assert "steps[0].params.rate" in issues([], ("throttle", {"rate": 0}))
    assert "steps[0].params.burst" in issues([], ("throttle", {"rate": 1, "burst": 0}))


# ---------------------------------------------------------------------------------------
# flatten
# ---------------------------------------------------------------------------------------


def test_flatten_one_level() -> None:
    items = [[1, 2], (3,), [], "abc", b"de", {"k": 1}, 7, [[8, 9]], range(2), {5}]
    out = run(items, ("flatten", {}))
    assert out == [1, 2, 3, "abc", b"de", {"k": 1}, 7, [8, 9], 0, 1, 5]


def test_flatten_depth() -> None:
    items = [[1, [2, [3, [4]]]], "ab", [["cd"]]]
    assert run(items, ("flatten", {"depth": 2})) == [1, 2, [3, [4]], "ab", "cd"]
    assert run(items, ("flatten", {"depth": None})) == [1, 2, 3, 4, "ab", "cd"]


def test_flatten_params_validation() -> None:
    assert "steps[0].params.depth" in issues([], ("flatten", {"depth": 0}))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(), max_size=5), max_size=20))
def test_flatten_undoes_batch(items: list[list[int]]) -> None:
    flat = [x for sub in items for x in sub]
    assert run(items, ("flatten", {})) == flat
    if flat:
        assert run(flat, ("batch", {"size": 3}), ("flatten", {})) == flat
