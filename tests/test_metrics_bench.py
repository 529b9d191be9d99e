"""The ``metrics`` benchmark scenario runs and reports its on/off pairs (tiny mode; the
figures themselves are for ``python -m benchmarks metrics``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_metrics_scenario_tiny(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks", "--json", str(out)),
            *("--rounds", "2", "--warmup", "0", "--n", "3000", "metrics"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["metrics"]) == {
        "metrics_on",
        "metrics_off",
        "metrics_on_small_batches",
        "metrics_off_small_batches",
    }
    for entry in data["metrics"].values():
        assert entry["rounds"] == 2
        assert entry["items_per_s"] > 0
    assert "cost of metrics (default batch)" in proc.stdout
    assert "at 16 items per batch metrics cost" in proc.stdout
