"""Per-sink branches: ``where`` and ``steps`` on a sink.

Each sink must receive exactly the items its ``where`` routes to it, shaped by its own
steps, while the shared steps run once per item whatever the number of sinks; a
branch's stateful steps are checkpointed like the shared ones.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import headwater

CALLS: list[Any] = []


def counted(item: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(item)
    return {**item, "big": item["n"] >= 50}


def is_warning(item: dict[str, Any]) -> bool:
    return bool(item["level"] == "WARN")


def routed(items: list[dict[str, Any]]) -> headwater.RunResult:
    return headwater.run_sync(
        {
            "name": "routes",
            "sources": {"logs": {"action": "iterable", "params": {"items": items}}},
            "steps": [{"transformer": "map", "params": {"fn": counted}}],
            "sinks": [
                {
                    "sink": "collect",
                    "name": "errors",
                    "where": {"expr": "level == 'ERROR'"},
                    "steps": [{"transformer": "select", "params": {"fields": ["n"]}}],
                },
                {"sink": "collect", "name": "warnings", "where": {"fn": is_warning}},
                {
                    "sink": "collect",
                    "name": "big_counts",
                    "where": {"expr": "big"},
                    "steps": [
                        {"transformer": "aggregate", "params": {"op": "count", "by": "level"}}
                    ],
                },
                {"sink": "collect", "name": "all"},
            ],
        }
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["INFO", "WARN", "ERROR"]), st.integers(0, 99)), max_size=60)
)
def test_each_sink_receives_exactly_its_routed_items(rows: list[tuple[str, int]]) -> None:
    items: list[dict[str, Any]] = [{"level": level, "n": n} for level, n in rows]
    CALLS.clear()
    result = routed(items)
    shaped = [{**x, "big": x["n"] >= 50} for x in items]
    assert result.outputs["errors"] == [{"n": x["n"]} for x in shaped if x["level"] == "ERROR"]
    assert result.outputs["warnings"] == [x for x in shaped if x["level"] == "WARN"]
    counts: dict[str, int] = {}
    for x in shaped:
        if x["big"]:
            counts[x["level"]] = counts.get(x["level"], 0) + 1
    assert result.outputs["big_counts"] == [counts]
    assert result.outputs["all"] == shaped
    assert len(CALLS) == len(items)  # the shared step ran once per item, not per sink
    stages = result.summary["stages"]
    assert stages["sinks.errors.where"]["items_out"] == len(result.outputs["errors"])


FAIL = {"at": -1}


def to_event(n: int) -> dict[str, Any]:
    if n == FAIL["at"]:
        raise RuntimeError(f"crash before item {n}")
    return {"t": n // 4, "k": f"k{n % 3}", "v": n}


def test_a_branch_window_is_checkpointed_and_resumes(tmp_path: Path) -> None:
    window = {
        "transformer": "window",
        "params": {
            "time": "event",
            "timestamp": "t",
            "by": "k",
            "seconds": 10,
            "agg": {"n": "count", "total": "sum:v"},
            "keep_items": False,
        },
    }

    def spec(sink: dict[str, Any], checkpoint: bool) -> dict[str, Any]:
        return {
            "name": "branch-windows",
            "sources": {"n": {"action": "range", "params": {"stop": 2000}}},
            "steps": [{"transformer": "map", "params": {"fn": to_event}}],
            "sinks": [
                {**sink, "where": {"expr": "k != 'k2'"}, "steps": [window]},
                {"sink": "null"},
            ],
            "batch_size": 32,
            **(
                {"checkpoint": {"every_items": 64, "params": {"path": str(tmp_path / "ck.db")}}}
                if checkpoint
                else {}
            ),
        }

    expected = headwater.run_sync(spec({"sink": "collect"}, False)).outputs["collect"]
    assert {w["key"] for w in expected} == {"k0", "k1"}
    db = tmp_path / "out.db"
    sqlite = {"sink": "sqlite", "params": {"path": str(db), "table": "w"}}
    for crash in (300, 1000, 1999):
        FAIL["at"] = crash
        failed = headwater.run_sync(spec(sqlite, True), resume=True, raise_on_error=False)
        assert failed.state == "failed"
    FAIL["at"] = -1
    headwater.run_sync(spec(sqlite, True), resume=True)
    conn = sqlite3.connect(db)
    try:
        cursor = conn.execute("SELECT * FROM w ORDER BY rowid")
        names = [d[0] for d in cursor.description]
        got = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()
    assert got == expected


def test_changing_a_branch_refuses_the_old_checkpoint(tmp_path: Path) -> None:
    def spec(where: str) -> dict[str, Any]:
        return {
            "name": "fp",
            "sources": {"n": {"action": "range", "params": {"stop": 10}}},
            "sinks": [{"sink": "collect", "where": {"expr": where}}],
            "checkpoint": {"params": {"path": str(tmp_path / "ck.db")}},
        }

    assert headwater.run_sync(spec("item > 5")).output == [6, 7, 8, 9]
    again = headwater.run_sync(spec("item > 6"), resume=True, raise_on_error=False)
    assert again.state == "failed"
    assert "changed since its checkpoint" in str(again.errors[0])
    plain = headwater.parse_pipeline(
        {"name": "fp", "sources": {"n": {"action": "range"}}, "sinks": [{"sink": "null"}]}
    )
    branched = headwater.parse_pipeline(
        {
            "name": "fp",
            "sources": {"n": {"action": "range"}},
            "sinks": [{"sink": "null", "where": {"expr": "True"}}],
        }
    )
    assert plain.fingerprint() != branched.fingerprint()


def test_bad_branches_are_named() -> None:
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.run_sync(
            {
                "name": "bad",
                "sources": {"n": {"action": "range", "params": {"stop": 1}}},
                "sinks": [
                    {
                        "sink": "collect",
                        "where": {"expr": "item ==="},
                        "steps": [
                            {"transformer": "nope"},
                            {
                                "transformer": "window",
                                "params": {
                                    "time": "event",
                                    "timestamp": "t",
                                    "seconds": 1,
                                    "late": "dead_letter",
                                },
                            },
                        ],
                    },
                    {"sink": "null", "where": {"fn": "os:system"}},
                ],
            }
        )
    text = str(info.value)
    assert "sinks[0].where.expr: line 1" in text
    assert "sinks[0].steps[0].transformer: no transformer 'nope'" in text
    assert "sinks[0].steps[1].params.late: late: dead_letter needs" in text
    assert "sinks[1].where.fn" in text


def test_a_transactional_sink_commits_the_states_of_every_branch(tmp_path: Path) -> None:
    # the SQLite sink commits the checkpoint it may resume from with its rows: it must
    # hold the state of the other sink's branch too, even though that branch is slower
    count = {"transformer": "aggregate", "params": {"op": "count", "emit": "running"}}
    db = tmp_path / "out.db"
    spec = {
        "name": "two-branches",
        "sources": {"n": {"action": "range", "params": {"stop": 1500, "chunk": 50}}},
        "steps": [{"transformer": "map", "params": {"fn": to_event}}],
        "sinks": [
            {
                "sink": "sqlite",
                "params": {"path": str(db), "table": "counts", "columns": ["n"]},
                "steps": [count, {"transformer": "map", "params": {"expr": "{'n': item}"}}],
            },
            {
                "sink": "null",
                "name": "slow",
                "steps": [
                    {"transformer": "throttle", "params": {"rate": 20_000, "burst": 1}},
                    count,
                ],
            },
        ],
        "batch_size": 16,
        "checkpoint": {"every_items": 50, "params": {"path": str(tmp_path / "ck.db")}},
    }
    FAIL["at"] = 1400
    try:
        failed = headwater.run_sync(spec, resume=True, raise_on_error=False)
    finally:
        FAIL["at"] = -1
    assert failed.state == "failed"
    conn = sqlite3.connect(db)
    try:
        [(data,)] = conn.execute("SELECT data FROM headwater_sink_checkpoints").fetchall()
    finally:
        conn.close()
    states = json.loads(data)["states"]
    assert json.loads(data)["items"] > 0
    assert {"sinks.sqlite.steps[0].aggregate", "sinks.slow.steps[1].aggregate"} <= set(states)
    done = headwater.run_sync(spec, resume=True)
    assert done.state == "succeeded"
    conn = sqlite3.connect(db)
    try:
        counts = [n for (n,) in conn.execute("SELECT n FROM counts ORDER BY rowid")]
    finally:
        conn.close()
    assert counts == list(range(1, 1501))
