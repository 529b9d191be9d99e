"""Smoke tests of the benchmark harness in ``benchmarks/``: it runs and its JSON has the
promised shape. Nothing here asserts on speed; that is what ``python -m benchmarks`` is for.

``memory`` and ``first-item`` run in a tiny mode (a few seconds); ``discovery`` builds
virtual environments and runs only when ``HEADWATER_BENCH_SMOKE_ALL=1``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY_ENV = "HEADWATER_BENCH_SMOKE_ALL"

THROUGHPUT_CORE = {
    "headwater",
    "headwater_builder",
    "plain_loop",
    "sync_chain",
    "async_chain",
    "anyio_per_item",
}
THROUGHPUT_PEERS = {"aiostream": "aiostream", "reactivex": "reactivex", "streamz": "streamz"}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_benchmarks(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``python -m benchmarks --json FILE ARGS``; return the JSON and the output."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--json", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "ABORTED" not in proc.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data, proc.stdout


def assert_metrics(entry: dict[str, Any], metrics: set[str], rounds: int) -> None:
    """Every metric is there as median, min and max, finite and non-negative."""
    for metric in metrics:
        for key in (metric, f"{metric}_min", f"{metric}_max"):
            value = entry[key]
            assert isinstance(value, int | float), key
            assert math.isfinite(value), key
            assert value >= 0, key
        assert entry[f"{metric}_min"] <= entry[metric] <= entry[f"{metric}_max"]
    assert entry["rounds"] == rounds


def test_throughput_tiny(tmp_path: Path) -> None:
    data, stdout = run_benchmarks(
        tmp_path, "--rounds", "2", "--warmup", "1", "--n", "2000", "throughput"
    )
    assert set(data) == {"throughput"}
    impls = data["throughput"]
    expected = THROUGHPUT_CORE | {name for name, mod in THROUGHPUT_PEERS.items() if _installed(mod)}
    assert set(impls) == expected
    for entry in impls.values():
        assert_metrics(entry, {"ns_per_item", "items_per_s", "seconds"}, rounds=2)
    # every implementation matched the closed-form sum (the harness aborts otherwise)
    assert "matched the closed form" in stdout
    assert "headwater vs async_chain" in stdout
    for name, mod in THROUGHPUT_PEERS.items():
        if not _installed(mod):
            assert f"{name} skipped" in stdout


def test_memory_and_first_item_tiny(tmp_path: Path) -> None:
    data, stdout = run_benchmarks(
        tmp_path, "--rounds", "1", "--warmup", "0", "--n", "5000", "memory", "first-item"
    )
    assert set(data) == {"memory", "first-item"}
    memory = data["memory"]
    assert set(memory) == {
        "python_bare",
        "import_headwater",
        "headwater_one_item",
        "headwater",
        "headwater_slow_sink",
        "plain_loop",
    }
    for entry in memory.values():
        assert_metrics(entry, {"rss_bytes", "seconds"}, rounds=1)
        assert entry["rss_bytes"] > 1e6
    first = data["first-item"]
    runner = {"headwater_run", "headwater_run_sync"} & set(first)
    assert len(runner) == 1
    assert {
        "import_headwater",
        "import_headwater_importtime",
        "dependencies_floor",
        "python_pass",
    } <= set(first)
    assert_metrics(first[runner.pop()], {"seconds", "exit_seconds"}, rounds=1)
    assert_metrics(first["import_headwater_importtime"], {"seconds"}, rounds=1)
    assert "targets:" in stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(HEAVY_ENV), reason=f"set {HEAVY_ENV}=1 to build venvs")
def test_discovery_tiny(tmp_path: Path) -> None:
    data, _ = run_benchmarks(
        tmp_path, "--rounds", "1", "--warmup", "0", "--plugins", "3", "discovery"
    )
    entries = data["discovery"]
    assert set(entries) == {"no_plugins", "with_plugins", "python_pass"}
    for entry in entries.values():
        assert_metrics(entry, {"seconds"}, rounds=1)


# -- the harness itself, in process ------------------------------------------------------


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ``benchmarks.harness`` module (the checkout root is not on sys.path by default)."""
    monkeypatch.syspath_prepend(str(REPO))
    import benchmarks.harness

    return benchmarks.harness


def test_rounds_alternate_and_mismatch_aborts(harness: Any) -> None:
    calls: list[str] = []

    def impl(name: str, result: int) -> Any:
        def run() -> Any:
            calls.append(name)
            return harness.Sample({"seconds": 1.0}, result)

        return harness.Implementation(name, run)

    measured = harness.measure([impl("a", 1), impl("b", 1)], rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert measured.stats["a"]["seconds"].rounds == 3
    assert len(measured.samples["b"]) == 3
    assert measured.skipped == {}

    with pytest.raises(harness.ResultMismatch, match="b produced 2"):
        harness.measure([impl("a", 1), impl("b", 2)], rounds=1, warmup=0)
    with pytest.raises(harness.ResultMismatch):
        harness.measure([impl("a", 1)], rounds=1, warmup=0, expected=5)


def test_missing_peer_is_skipped(harness: Any) -> None:
    never = harness.Implementation(
        "ghost",
        lambda: pytest.fail("must not run"),
        requires=("no_such_module_for_headwater_bench",),
    )
    measured = harness.measure([never], rounds=1, warmup=1)
    assert measured.stats == {}
    assert "no_such_module_for_headwater_bench" in measured.skipped["ghost"]


def test_parse_importtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks.scenarios.first_item import parse_importtime

    stderr = (
        "import time: self [us] | cumulative | imported package\n"
        "import time:       120 |        120 |     headwater.markers\n"
        "import time:      2000 |      12345 | headwater\n"
    )
    assert parse_importtime(stderr) == pytest.approx(0.012345)


def test_ratio_pairs_rounds(harness: Any) -> None:
    # the machine got 3x slower in round 2: per-round ratios stay 2.0
    samples = {"a": [{"s": 1.0}, {"s": 3.0}, {"s": 1.1}], "b": [{"s": 2.0}, {"s": 6.0}, {"s": 2.2}]}
    stats = {k: {"s": harness.Stat.of([r["s"] for r in v])} for k, v in samples.items()}
    report = harness.ScenarioReport(
        name="t",
        title="t",
        params={},
        measured=harness.Measured(stats, samples, {}),
        columns=[harness.Column("s", "s", harness.fmt_seconds)],
        baseline="a",
        ratio_metric="s",
    )
    assert report.ratio("b", "a", "s") == pytest.approx(2.0)
    target = report.target_ratio("b", "a", "s", 2.5)
    assert target.met is False
    report.targets.append(target)
    text = harness.render(report)
    assert "NOT MET" in text
    assert "2.00x" in text
