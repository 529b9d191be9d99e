"""Windowed joins (``compose: {join: ...}``) against a plain-Python reference.

The reference pairs every left and right item with equal keys whose event times are at
most ``within`` apart, and (``how: left``) adds each left item that has no such partner.
The join state is driven with random interleavings of the two inputs; late items are
those below the minimum of the two sides' watermarks (largest time seen minus
``lateness``) when they arrive, exactly as a direct simulation of the two clocks says.
Pipelines with real sources check the wiring: pairs, left rows, the watermark reaching
a downstream event-time window, and clear errors.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import headwater
from headwater.core.compose import JoinSpec
from headwater.core.join import JoinState

Item = dict[str, Any]


def reference(left: list[Item], right: list[Item], within: float, how: str) -> list[Any]:
    pairs = [
        (a["id"], b["id"])
        for a in left
        for b in right
        if a["k"] == b["k"] and abs(a["t"] - b["t"]) <= within
    ]
    if how == "left":
        matched = {a for a, _ in pairs}
        pairs += [(a["id"], None) for a in (x for x in left) if a["id"] not in matched]
    return sorted(pairs, key=repr)


def side_items(side: str, rows: list[tuple[int, str]]) -> list[Item]:
    return [{"id": f"{side}{i}", "t": 100 + i - d, "k": k} for i, (d, k) in enumerate(rows)]


rows = st.lists(st.tuples(st.integers(0, 4), st.sampled_from("abc")), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    left_rows=rows,
    right_rows=rows,
    order=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 5)), max_size=60),
    within=st.integers(0, 6),
    lateness=st.integers(0, 6),
    how=st.sampled_from(["inner", "left"]),
)
def test_join_state_matches_the_reference(
    left_rows: list[tuple[int, str]],
    right_rows: list[tuple[int, str]],
    order: list[tuple[int, int]],
    within: int,
    lateness: int,
    how: str,
) -> None:
    inputs = [side_items("L", left_rows), side_items("R", right_rows)]
    spec = JoinSpec(
        sources=["l", "r"], on="k", timestamp="t", within=within, lateness=lateness, how=how
    )
    state = JoinState(spec)
    out: list[Any] = []
    late: list[Any] = []
    # the reference clocks: each side's largest time, the join's watermark their minimum
    largest = [-math.inf, -math.inf]
    expected_late: list[Any] = []
    on_time: list[list[Item]] = [[], []]
    cursor = [0, 0]
    chunks = [*order, (0, 10**6), (1, 10**6)]  # then whatever is left of each side
    for side, n in chunks:
        batch = inputs[side][cursor[side] : cursor[side] + n]
        cursor[side] += len(batch)
        if not batch:
            continue
        watermark = min(largest) - lateness if -math.inf not in largest else -math.inf
        for item in batch:
            if item["t"] < watermark:
                expected_late.append(item)
            else:
                on_time[side].append(item)
                largest[side] = max(largest[side], item["t"])
        state.add(side, batch, out, late)
        state.advance(out)
    state.end(0)
    state.end(1)
    state.flush(out)
    assert late == expected_late
    got = sorted(((p["left"]["id"], p["right"] and p["right"]["id"]) for p in out), key=repr)
    assert got == reference(on_time[0], on_time[1], within, how)
    assert all(p["key"] == p["left"]["k"] for p in out)


def join_pipeline(how: str = "inner", **extra: Any) -> dict[str, Any]:
    orders = [{"order": i, "t": 10 * i, "user": f"u{i % 3}"} for i in range(30)]
    clicks = [{"click": i, "t": 10 * i + 2, "user": f"u{i % 2}"} for i in range(30)]
    return {
        "name": "join",
        "sources": {
            "orders": {"action": "iterable", "params": {"items": orders}},
            "clicks": {"action": "iterable", "params": {"items": clicks}},
        },
        "compose": {
            "join": {
                "sources": ["orders", "clicks"],
                "on": "user",
                "timestamp": "t",
                "within": 5,
                "lateness": 100,
                "how": how,
            }
        },
        "sinks": [{"sink": "collect"}],
        **extra,
    }


def test_a_pipeline_joins_its_two_sources() -> None:
    inner = headwater.run_sync(join_pipeline()).output
    # order i and click i share a user when i % 3 == i % 2, i.e. i % 6 in (0, 1)
    assert sorted((p["left"]["order"], p["right"]["click"]) for p in inner) == [
        (i, i) for i in range(30) if i % 6 in (0, 1)
    ]
    left = headwater.run_sync(join_pipeline("left")).output
    assert sorted(p["left"]["order"] for p in left if p["right"] is None) == [
        i for i in range(30) if i % 6 not in (0, 1)
    ]
    assert len(left) == 30


def test_the_join_watermark_reaches_a_downstream_window() -> None:
    window = {
        "transformer": "window",
        "params": {
            "time": "event",
            "timestamp": "left.t",
            "seconds": 60,
            "lateness": 100,
            "agg": {"pairs": "count"},
            "keep_items": False,
        },
    }
    result = headwater.run_sync(join_pipeline(steps=[window]))
    assert [(w["start"], w["pairs"]) for w in result.output] == [
        (0, 2),
        (60, 2),
        (120, 2),
        (180, 2),
        (240, 2),
    ]


def test_join_errors_are_named() -> None:
    with pytest.raises(headwater.PipelineValidationError, match=r"compose\.join"):
        headwater.parse_pipeline(
            {
                "name": "bad",
                "sources": {"a": {"action": "range"}, "b": {"action": "range"}},
                "compose": {"join": {"sources": ["a"], "on": "k", "timestamp": "t", "within": 1}},
                "sinks": [{"sink": "null"}],
            }
        )
    dead = join_pipeline()
    dead["compose"]["join"]["late"] = "dead_letter"
    with pytest.raises(headwater.PipelineValidationError, match=r"compose\.join\.late: late"):
        headwater.run_sync(dead)
    missing = join_pipeline()
    missing["compose"]["join"]["on"] = "nope"
    with pytest.raises(headwater.PipelineFailed, match=r"compose.join.*no field 'nope'"):
        headwater.run_sync(missing)
    checkpointed = join_pipeline(checkpoint={"params": {"path": "ck.db"}})
    with pytest.raises(headwater.PipelineValidationError, match="is not resumable"):
        headwater.run_sync(checkpointed)


# -- checkpoints -----------------------------------------------------------------------

FAIL: dict[str, Any] = {"at": None}


class EventsParams(BaseModel):
    side: str
    n: int


@headwater.action(
    "test.join_events", params=EventsParams, capabilities=("streaming", "resumable"), batched=True
)
async def join_events(params: EventsParams, ctx: headwater.StreamContext) -> AsyncIterator[Any]:
    """Keyed events in chunks of 10, with bounded disorder; resumable (position: the next
    index); the left side fails before index ``FAIL["at"]`` when it is set."""
    first = int(ctx.resume_position or 0)
    for offset in range(first, params.n, 10):
        end = min(offset + 10, params.n)
        if params.side == "L" and FAIL["at"] is not None and offset <= FAIL["at"] < end:
            raise RuntimeError(f"crash before item {FAIL['at']}")
        if params.side == "L":
            yield [{"id": f"L{i}", "t": i, "k": i % 5} for i in range(offset, end)]
        else:
            yield [{"id": f"R{i}", "t": i + (i * 7) % 3, "k": i % 3} for i in range(offset, end)]
        await anyio.lowlevel.checkpoint()
        ctx.checkpoint(end)


class JoinTestComponents:
    @staticmethod
    @headwater.hookimpl
    def register_actions(register: Any) -> None:
        register(join_events)


def flat(pair: dict[str, Any]) -> dict[str, Any]:
    right = pair["right"]
    return {"key": pair["key"], "l": pair["left"]["id"], "r": right["id"] if right else None}


def checkpointed_join(tmp_path: Path, sink: dict[str, Any], how: str) -> dict[str, Any]:
    return {
        "name": f"join-{how}",
        "sources": {
            "left": {"action": "test.join_events", "params": {"side": "L", "n": 600}},
            "right": {"action": "test.join_events", "params": {"side": "R", "n": 600}},
        },
        "compose": {
            "join": {
                "sources": ["left", "right"],
                "on": "k",
                "timestamp": "t",
                "within": 2,
                "lateness": 5,
                "how": how,
            }
        },
        "steps": [{"transformer": "map", "params": {"fn": flat}}],
        "sinks": [sink],
        "checkpoint": {"every_items": 40, "params": {"path": str(tmp_path / f"ck-{how}.db")}},
    }


@pytest.mark.parametrize("how", ["inner", "left"])
def test_a_checkpointed_join_resumes_exactly_once(
    tmp_path: Path, register_plugin: Any, how: str
) -> None:
    register_plugin(JoinTestComponents, "join-tests")
    left = [{"id": f"L{i}", "t": i, "k": i % 5} for i in range(600)]
    right = [{"id": f"R{i}", "t": i + (i * 7) % 3, "k": i % 3} for i in range(600)]
    expected = reference(left, right, 2, how)
    db = tmp_path / f"out-{how}.db"
    sink = {"sink": "sqlite", "params": {"path": str(db), "table": "pairs"}}
    spec = checkpointed_join(tmp_path, sink, how)
    try:
        for crash in (130, 300, 470):
            FAIL["at"] = crash
            failed = headwater.run_sync(spec, resume=True, raise_on_error=False)
            assert failed.state == "failed"
            assert "crash before item" in str(failed.errors[0])
    finally:
        FAIL["at"] = None
    done = headwater.run_sync(spec, resume=True)
    assert done.summary["checkpoint"]["resumed"] is True
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT l, r FROM pairs").fetchall()
    finally:
        conn.close()
    assert len(rows) == len(set(rows))  # each pair once
    assert sorted(rows, key=repr) == [tuple(p) for p in expected]


def test_a_bare_on_in_a_pipeline_file_is_the_key(tmp_path: Path) -> None:
    # YAML 1.1 reads `on` as true: the join takes it as the key field all the same
    path = tmp_path / "join.yaml"
    path.write_text(
        "name: j\n"
        "sources:\n"
        "  a: {action: range}\n"
        "  b: {action: range}\n"
        "compose:\n"
        "  join: {sources: [a, b], on: user, timestamp: t, within: 1}\n"
        "sinks: [{sink: 'null'}]\n"
    )
    spec = headwater.load_pipeline(path)
    assert spec.compose is not None
    assert spec.compose.join is not None
    assert spec.compose.join.on == "user"


def test_an_idle_side_stops_holding_the_watermark_back() -> None:
    spec = JoinSpec(sources=["l", "r"], on="k", timestamp="t", within=1, how="left", idle_timeout=5)
    state = JoinState(spec)
    out: list[Any] = []
    state.add(0, [{"k": "a", "t": 10}, {"k": "a", "t": 50}], out, [])
    assert state.advance(out) == -math.inf  # the right side has said nothing yet
    later = state.watermarks.last_seen[0] + 6  # both sides quiet for longer than 5 s
    assert state.advance(out, now=later) == 50
    assert out == [{"key": "a", "left": {"k": "a", "t": 10}, "right": None}]
