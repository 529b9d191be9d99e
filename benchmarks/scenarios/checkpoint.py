"""``checkpoint``: the cost of checkpoints, exactly-once (SQLite) and at-least-once (jsonl).

``range(N) -> map(record) -> sink`` with the sink ``sqlite`` (one transaction per batch,
or, checkpointed, one per checkpoint committed with its rows: exactly-once) and ``jsonl``
(checkpointed: flushed and fsynced at each checkpoint: at-least-once), each run with and
without ``checkpoint:`` at the default interval, in the same process, alternating within
every round. Every round writes to fresh files in a temporary directory, and the rows or
lines written are counted afterwards (outside the timed part) and must be N.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..harness import (
    Column,
    Implementation,
    Sample,
    ScenarioReport,
    Settings,
    fmt_ns,
    fmt_rate,
    fmt_seconds,
    measure,
    timed,
)
from . import Progress

TITLE = "cost of checkpoints: range -> map -> sqlite (exactly-once) / jsonl (at-least-once)"
DESCRIPTION = (
    "One process; the same pipeline into the sqlite and the jsonl sink, each with and "
    "without a checkpoint section (default interval: 10,000 items or 5 s), alternating "
    "within every round. Metrics: seconds, ns_per_item, items_per_s, checkpoints."
)

FULL_N = 1_000_000
QUICK_N = 200_000
WARMUP_N = 20_000
COST_TARGET = 1.25
"""Checkpointed time / plain time: the cost of exactly-once must stay below 25 %."""


def record(x: int) -> dict[str, int]:
    """The ``map`` step: a small record (a row for sqlite, an object for jsonl)."""
    return {"n": x, "v": x * 2}


def pipeline(sink: str, directory: Path, n: int, checkpoint: bool) -> dict[str, Any]:
    """The pipeline as a YAML file would define it, writing into ``directory``."""
    params: dict[str, Any] = (
        {"path": str(directory / "out.db"), "table": "t"}
        if sink == "sqlite"
        else {"path": str(directory / "out.jsonl")}
    )
    spec: dict[str, Any] = {
        "name": f"bench-checkpoint-{sink}",
        "sources": {"numbers": {"action": "range", "params": {"stop": n}}},
        "steps": [
            {"transformer": "map", "params": {"fn": "benchmarks.scenarios.checkpoint:record"}}
        ],
        "sinks": [{"sink": sink, "params": params}],
    }
    if checkpoint:
        spec["checkpoint"] = {"params": {"path": str(directory / "checkpoints.db")}}
    return spec


def written(sink: str, directory: Path) -> int:
    """Rows or lines in the output (each line must be JSON)."""
    if sink == "sqlite":
        conn = sqlite3.connect(directory / "out.db")
        try:
            return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])
        finally:
            conn.close()
    with (directory / "out.jsonl").open(encoding="utf-8") as lines:
        return sum(1 for line in lines if json.loads(line) is not None)


def make(sink: str, checkpoint: bool, n: int) -> Callable[[], Sample]:
    """One round: run the pipeline into fresh files, then check what it wrote."""
    import headwater

    def run() -> Sample:
        with tempfile.TemporaryDirectory(prefix="hw-bench-") as tmp:
            directory = Path(tmp)
            spec = pipeline(sink, directory, n, checkpoint)
            sample = timed(lambda: headwater.run_sync(spec))
            info = sample.result.summary.get("checkpoint") or {}
            sample.metrics["checkpoints"] = float(info.get("saved") or 0)
            sample.result = written(sink, directory)
        return sample

    return run


def _derive(n: int) -> Callable[[dict[str, float]], dict[str, float]]:
    def derive(metrics: dict[str, float]) -> dict[str, float]:
        seconds = metrics["seconds"]
        return {
            "seconds": seconds,
            "ns_per_item": seconds * 1e9 / n,
            "items_per_s": n / seconds,
            "cpu_seconds": metrics["cpu_seconds"],
            "checkpoints": metrics["checkpoints"],
        }

    return derive


IMPLEMENTATIONS = (
    ("sqlite", False, "sqlite sink, a transaction per batch, no checkpoints"),
    ("sqlite", True, "sqlite sink, checkpointed: rows + checkpoint in one transaction"),
    ("jsonl", False, "jsonl sink, no checkpoints"),
    ("jsonl", True, "jsonl sink, checkpointed: flush + fsync at each checkpoint"),
)


def _name(sink: str, checkpoint: bool) -> str:
    return f"{sink}_{'checkpointed' if checkpoint else 'plain'}"


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure the four variants; targets: checkpointed time < 1.25x plain time."""
    n = settings.pick_n(FULL_N, QUICK_N)
    rounds = settings.pick_rounds(full=5, quick=2)
    warmup = settings.pick_warmup(1)
    impls = [
        Implementation(
            _name(sink, checkpoint),
            run=make(sink, checkpoint, n),
            warmup=make(sink, checkpoint, min(n, WARMUP_N)),
            description=description,
        )
        for sink, checkpoint, description in IMPLEMENTATIONS
    ]
    measured = measure(
        impls, rounds=rounds, warmup=warmup, derive=_derive(n), expected=n, progress=progress
    )
    report = ScenarioReport(
        name="checkpoint",
        title=TITLE,
        params={"N": n, "rounds": rounds, "warm-up": warmup},
        measured=measured,
        columns=[
            Column("seconds", "seconds", fmt_seconds),
            Column("ns_per_item", "ns/item", fmt_ns, spread=False),
            Column("items_per_s", "items/s", fmt_rate, spread=False),
            Column("checkpoints", "checkpoints", lambda v: f"{v:,.0f}", spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="sqlite_plain",
        ratio_metric="seconds",
        ratio_header="time vs sqlite_plain",
    )
    report.targets = [
        report.target_ratio_below("sqlite_checkpointed", "sqlite_plain", "seconds", COST_TARGET),
        report.target_ratio_below("jsonl_checkpointed", "jsonl_plain", "seconds", COST_TARGET),
    ]
    for sink, kind in (("sqlite", "exactly-once"), ("jsonl", "at-least-once")):
        cost = report.ratio(f"{sink}_checkpointed", f"{sink}_plain", "seconds")
        if cost is not None:
            report.notes.append(
                f"cost of {kind} ({sink}) at the default interval: {(cost - 1) * 100:+.0f} % "
                "time (median of per-round ratios)"
            )
    report.notes.append(
        f"every variant wrote exactly {n:,} rows / valid JSON lines in every round; every "
        "checkpoint costs an fsync by the sink and one by the checkpoint store"
    )
    wall = report.median("sqlite_checkpointed", "seconds")
    cpu = report.median("sqlite_checkpointed", "cpu_seconds")
    if wall and cpu and cpu < 0.7 * wall:
        report.notes.append(
            f"the machine was busy or the disk slow: sqlite_checkpointed's wall time was "
            f"{wall / cpu:.2f}x its CPU time"
        )
    return report
