"""Smoke test of the ``expr`` benchmark scenario: it runs, every row matched its reference
result, and it prints the expr/fn ratios. Nothing here asserts on speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = {"ints_fn", "ints_expr", "records_fn", "records_expr", "loop_fn", "loop_expr"}


def test_expr_scenario_tiny(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--json", str(out), "--rounds", "2", "--n", "3000", "expr"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    data = json.loads(out.read_text(encoding="utf-8"))
    assert set(data["expr"]) == ROWS
    for entry in data["expr"].values():
        assert entry["rounds"] == 2
        assert entry["ns_per_item"] > 0
    assert "matched its reference result in every round" in proc.stdout
    for work in ("ints", "records", "loop"):
        assert f"{work}_expr vs {work}_fn (items_per_s)" in proc.stdout
        assert f"{work}: expr takes " in proc.stdout
