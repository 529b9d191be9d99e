"""Crash test of a keyed event-time window: a real ``headwater run`` aggregating keyed
events with bounded disorder into per-key tumbling windows (count and sum) is killed with
SIGKILL ten times and resumed with ``--resume``; the SQLite table must equal what one
uninterrupted run emits, every window exactly once.

Window contents, the watermark and the keys live in the step's state, which rides in the
checkpoint that the SQLite sink commits with its rows. The kill loop and its seed are
those of ``test_crash_resume`` (replay with ``HEADWATER_CRASH_SEED=<seed>``).
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import pytest
import yaml

import headwater
import test_crash_resume as crash

LINES = 400_000
KEYS = 50
DISORDER = 40
"""Events arrive up to this many seconds out of order; lateness is smaller, so a few
are late (and dropped): which ones depends only on the order, so a resumed run agrees."""

seed = crash.seed


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(7)
    path = tmp_path_factory.mktemp("events") / "events.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(LINES):
            event = {"t": 1_700_000_000 + i // 20 - rng.randint(0, DISORDER), "k": f"k{i % KEYS}"}
            f.write(json.dumps({**event, "v": i}, separators=(",", ":")) + "\n")
    return path


STEP = (
    "{transformer: window, params: {time: event, timestamp: t, by: k, seconds: 60, "
    "lateness: 30, agg: {n: count, total: 'sum:v'}, keep_items: false}}"
)


def test_keyed_event_time_windows_are_exactly_once_across_kill_9(
    tmp_path: Path, events_file: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(crash, "KILLS", 10)
    db = tmp_path / "out.db"
    sink = "{sink: sqlite, params: {path: out.db, table: windows}}"
    text = crash.pipeline_yaml("crash-windows", events_file, STEP, sink)
    (tmp_path / "p.yaml").write_text(text)
    uninterrupted = {**yaml.safe_load(text), "sinks": [{"sink": "collect"}], "checkpoint": None}
    expected = headwater.run_sync(headwater.parse_pipeline(uninterrupted)).output

    def checkpointed_items() -> int:
        found = crash._query(db, "SELECT data FROM headwater_sink_checkpoints")
        return int(json.loads(str(found[0][0]))["items"]) if found else 0

    crashes = crash.crash_and_resume(tmp_path, checkpointed_items, LINES, seed)
    assert crashes.mid_run >= 5, crashes
    conn = sqlite3.connect(db)
    try:
        cursor = conn.execute("SELECT * FROM windows ORDER BY rowid")
        names = [d[0] for d in cursor.description]
        got = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()
    assert len({(w["key"], w["start"]) for w in got}) == len(got), crashes  # each once
    assert got == expected, crashes
    # the late events were dropped, every other one counted once
    assert 0 < LINES - sum(w["n"] for w in expected) < LINES // 4
