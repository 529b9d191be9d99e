"""``stateful_map``: a state per key, bounded by ``ttl`` and ``max_keys``, checkpointed as
JSON.

The key limit is compared with a reference LRU model on random keys (hypothesis); state
goes through a JSON round trip at a random point and must continue as if uninterrupted;
a checkpointed run that fails mid-way and resumes writes what one uninterrupted run
writes; a state that JSON cannot hold fails with an error naming the key.
"""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater
from headwater.builtin_plugins.transformers import StatefulMapParams
from headwater.builtin_plugins.transformers.keyed import stateful_map_transformer


def running_sum(state: int, item: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    total = state + item["v"]
    return total, {"k": item["k"], "total": total}


def reference(items: list[dict[str, Any]], max_keys: int | None) -> tuple[list[Any], int]:
    """Running sums per key with an LRU key limit, and the number of keys evicted."""
    states: OrderedDict[Any, int] = OrderedDict()
    out = []
    evicted = 0
    for item in items:
        total = states.pop(item["k"], 0) + item["v"]
        states[item["k"]] = total
        if max_keys is not None and len(states) > max_keys:
            states.popitem(last=False)
            evicted += 1
        out.append({"k": item["k"], "total": total})
    return out, evicted


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.sampled_from(["a", "b", "c", "d", 1, (2, 3)]), max_size=80),
    max_keys=st.none() | st.integers(1, 5),
    cut=st.integers(0, 80),
)
def test_keys_and_lru_eviction_match_the_reference(
    keys: list[Any], max_keys: int | None, cut: int
) -> None:
    items = [{"k": k, "v": i} for i, k in enumerate(keys)]
    params = StatefulMapParams.model_validate(
        {"fn": running_sum, "by": "k", "initial": 0, "max_keys": max_keys}
    )
    step = stateful_map_transformer(params)
    out = [y for item in items[:cut] for y in step(item)]
    evicted = step.take_evicted()
    restored = stateful_map_transformer(params)  # continue from a checkpoint's JSON
    restored.restore(json.loads(json.dumps(step.snapshot())))
    out += [y for item in items[cut:] for y in restored(item)]
    evicted += restored.take_evicted()
    assert (out, evicted) == reference(items, max_keys)


def test_ttl_forgets_quiet_keys_and_none_emits_nothing() -> None:
    def count_and_keep_firsts(state: int, item: dict[str, Any]) -> tuple[int, Any]:
        return state + 1, (item if state == 0 else None)

    params = StatefulMapParams.model_validate(
        {"fn": count_and_keep_firsts, "by": "k", "initial": 0, "ttl": 1e-9}
    )
    step = stateful_map_transformer(params)
    # every key is forgotten before its next item: every item is a first again
    assert [y for i in range(4) for y in step({"k": "a", "i": i})] == [
        {"k": "a", "i": i} for i in range(4)
    ]
    assert step.take_evicted() == 3
    kept = stateful_map_transformer(
        StatefulMapParams.model_validate({"fn": count_and_keep_firsts, "by": "k", "initial": 0})
    )
    assert [y for i in range(4) for y in kept({"k": "a", "i": i})] == [{"k": "a", "i": 0}]


def test_evictions_are_counted_in_the_stage_figures() -> None:
    result = (
        headwater.Pipeline("lru")
        .source("iterable", items=[{"k": i % 3, "v": 1} for i in range(9)])
        .step("stateful_map", fn=running_sum, by="k", initial=0, max_keys=2)
        .sink("collect")
        .run_sync()
    )
    assert [x["total"] for x in result.output] == [1] * 9
    assert result.summary["stages"]["steps[0].stateful_map"]["evicted"] == 7


FAIL = {"at": -1}


def to_event(n: int) -> dict[str, Any]:
    if n == FAIL["at"]:
        raise RuntimeError(f"crash before item {n}")
    return {"k": f"k{n % 7}", "v": n}


def test_a_checkpointed_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    def spec(sink: dict[str, Any], checkpoint: bool) -> dict[str, Any]:
        return {
            "name": "keyed",
            "sources": {"n": {"action": "range", "params": {"stop": 3000}}},
            "steps": [
                {"transformer": "map", "params": {"fn": to_event}},
                {
                    "transformer": "stateful_map",
                    "params": {"fn": running_sum, "by": "k", "initial": 0, "max_keys": 5},
                },
            ],
            "sinks": [sink],
            "batch_size": 32,
            **(
                {"checkpoint": {"every_items": 100, "params": {"path": str(tmp_path / "ck.db")}}}
                if checkpoint
                else {}
            ),
        }

    expected = headwater.run_sync(spec({"sink": "collect"}, False)).output
    db = tmp_path / "out.db"
    sqlite = {"sink": "sqlite", "params": {"path": str(db), "table": "t"}}
    for crash in (250, 1234, 2999):
        FAIL["at"] = crash
        failed = headwater.run_sync(spec(sqlite, True), resume=True, raise_on_error=False)
        assert failed.state == "failed"
    FAIL["at"] = -1
    headwater.run_sync(spec(sqlite, True), resume=True)
    conn = sqlite3.connect(db)
    try:
        got = [
            {"k": k, "total": t} for k, t in conn.execute("SELECT k, total FROM t ORDER BY rowid")
        ]
    finally:
        conn.close()
    assert got == expected


class Opaque:
    """A state JSON cannot hold."""


def keep_opaque(state: Any, item: Any) -> tuple[Any, Any]:
    return Opaque(), item


def test_a_state_json_cannot_hold_is_refused_naming_the_key(tmp_path: Path) -> None:
    pipe = {
        "name": "opaque",
        "sources": {"n": {"action": "range", "params": {"stop": 10}}},
        "steps": [
            {"transformer": "map", "params": {"expr": "{'k': 'left' if item < 5 else 'right'}"}},
            {"transformer": "stateful_map", "params": {"fn": keep_opaque, "by": "k"}},
        ],
        "sinks": [{"sink": "collect"}],
        "checkpoint": {"every_items": 1, "params": {"path": str(tmp_path / "ck.db")}},
    }
    result = headwater.run_sync(pipe, raise_on_error=False)
    assert result.state == "failed"
    message = str(result.errors[0])
    assert "steps[1].stateful_map" in message
    assert "the state of key 'left' cannot be checkpointed" in message
    assert "test_stateful_map.Opaque" in message


def test_fn_must_return_a_pair() -> None:
    pipe = (
        headwater.Pipeline("pair")
        .source("range", stop=3)
        .step("stateful_map", fn=lambda state, item: item)
        .sink("collect")
    )
    with pytest.raises(headwater.PipelineFailed, match=r"fn must return a pair \(new state"):
        pipe.run_sync()


def test_fn_names_are_checked_by_the_sandbox_policy() -> None:
    pipe = headwater.Pipeline("deny").source("range", stop=1)
    pipe.step("stateful_map", fn="os:system").sink("collect")
    with pytest.raises(headwater.PipelineValidationError, match=r"steps\[0\]\.params\.fn"):
        pipe.run_sync()
