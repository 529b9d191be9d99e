"""Tests of headwater-sysmon, with the pytest fixtures headwater ships for plugin authors."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import headwater
import pytest
from headwater.testing import RegisterPlugin, run_pipeline

import headwater_sysmon
from headwater_sysmon import Sampler, StatusParams

linux_only = pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc")


@pytest.fixture
def plugin(register_plugin: RegisterPlugin) -> None:
    register_plugin(headwater_sysmon)


def test_components_are_registered(register_plugin: RegisterPlugin) -> None:
    info = register_plugin(headwater_sysmon)
    assert sorted(info.components) == ["action:sysmon.status", "transformer:sysmon.alerts"]


# -- a fake /proc: exact figures ----------------------------------------------------------


def write_proc(root: Path, *, cpu: list[int], cpu0: list[int], procs: dict[int, str]) -> None:
    root.mkdir(exist_ok=True)
    (root / "stat").write_text(
        "cpu  " + " ".join(map(str, cpu)) + "\ncpu0 " + " ".join(map(str, cpu0)) + "\nintr 1\n"
    )
    (root / "meminfo").write_text(
        "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n"
        "SwapTotal:       400 kB\nSwapFree:        300 kB\n"
    )
    (root / "loadavg").write_text("0.50 0.25 0.10 1/80 1234\n")
    (root / "uptime").write_text("12345.67 999.00\n")
    for pid, stat in procs.items():
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "stat").write_text(stat)
    (root / "self").mkdir(exist_ok=True)  # not a pid: ignored


def proc_stat(pid: int, name: str, utime: int, stime: int, threads: int, rss: int) -> str:
    """A ``/proc/PID/stat`` line; fields numbered as in proc(5), from 3 (state) on."""
    fields = {n: "0" for n in range(3, 53)}
    fields.update({3: "S", 4: "1", 14: str(utime), 15: str(stime), 20: str(threads)})
    fields[24] = str(rss)
    return f"{pid} ({name}) " + " ".join(fields[n] for n in sorted(fields)) + "\n"


def test_figures_from_a_fake_proc(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    odd_name = "web (worker) 1"  # names may hold spaces and parentheses
    write_proc(
        root,
        cpu=[100, 0, 100, 700, 100, 0, 0, 0],
        cpu0=[100, 0, 100, 700, 100, 0, 0, 0],
        procs={10: proc_stat(10, odd_name, 100, 50, 4, 25), 11: proc_stat(11, "idle", 5, 0, 1, 2)},
    )
    sampler = Sampler(StatusParams(proc_root=str(root), top=1, pids=[11], disks=[str(tmp_path)]))
    sampler.prime()
    # 1,000 more ticks, 300 of them busy; process 10 used 200 ticks
    write_proc(
        root,
        cpu=[300, 0, 200, 1300, 200, 0, 0, 0],
        cpu0=[300, 0, 200, 1300, 200, 0, 0, 0],
        procs={10: proc_stat(10, odd_name, 250, 100, 4, 25), 11: proc_stat(11, "idle", 5, 0, 1, 2)},
    )
    sampler._at = time.monotonic() - 2.0  # as if 2 s passed
    snap = sampler.sample()
    assert snap["cpu"]["percent"] == 30.0
    assert snap["cpu"]["per_cpu"] == [30.0]
    assert snap["cpu"]["count"] == 1
    assert snap["memory"]["total"] == 1000 * 1024
    assert snap["memory"]["used_percent"] == 75.0
    assert snap["memory"]["swap_used"] == 100 * 1024
    assert snap["load"] == [0.5, 0.25, 0.1]
    assert snap["uptime"] == 12345.67
    busiest, pinned = snap["processes"]
    assert busiest["pid"] == 10
    assert busiest["name"] == odd_name
    assert busiest["threads"] == 4
    assert busiest["rss"] == 25 * sampler.page
    assert busiest["cpu_percent"] == pytest.approx(100.0 * 200 / sampler.ticks / 2.0, abs=0.5)
    assert pinned["pid"] == 11
    assert snap["disks"][0]["path"] == str(tmp_path)
    assert snap["notes"] == []


def test_degrades_gracefully_without_proc(tmp_path: Path) -> None:
    sampler = Sampler(StatusParams(proc_root=str(tmp_path / "none"), disks=["/", "/no/such"]))
    sampler.prime()
    snap = sampler.sample()
    assert snap["cpu"] is None
    assert snap["memory"] is None
    assert snap["processes"] is None
    assert snap["notes"]
    assert "unavailable" in snap["notes"][0]
    assert snap["disks"][0]["total"] > 0
    assert "error" in snap["disks"][1]
    if hasattr(os, "getloadavg"):
        assert len(snap["load"]) == 3


# -- the real system ----------------------------------------------------------------------


@linux_only
@pytest.mark.usefixtures("plugin")
def test_streams_snapshots_at_an_interval() -> None:
    pipeline = headwater.Pipeline("mon").source(
        "sysmon.status", interval=0.05, count=3, pids=[os.getpid()]
    )
    started = time.monotonic()
    snapshots = run_pipeline(pipeline.sink("collect")).output
    assert time.monotonic() - started >= 0.15
    assert [s["sample"] for s in snapshots] == [1, 2, 3]
    for snap in snapshots:
        assert snap["platform"] == sys.platform
        percent = snap["cpu"]["percent"]
        assert percent is None or 0.0 <= percent <= 100.0
        assert snap["memory"]["total"] > 0
        assert 0 <= snap["memory"]["used_percent"] <= 100
        assert len(snap["load"]) == 3
        assert snap["disks"][0]["path"] == "/"
        assert os.getpid() in {p["pid"] for p in snap["processes"]}


@pytest.mark.usefixtures("plugin")
def test_runs_until_cancelled_and_reports_progress() -> None:
    events: list[Any] = []

    async def main() -> headwater.RunResult:
        spec = headwater.Pipeline("mon").source("sysmon.status", interval=0.02).sink("null")
        with anyio.fail_after(10):
            async with headwater.open_run(spec) as handle:
                async for event in handle.events():
                    events.append(event)
                    if isinstance(event, headwater.Progress) and event.done >= 3:
                        handle.cancel("enough")
                return await handle.wait()

    result = anyio.run(main)
    assert result.state == "cancelled"
    progress = [e for e in events if isinstance(e, headwater.Progress)]
    assert progress[-1].done >= 3
    assert progress[-1].total is None  # no count: an endless stream


@pytest.mark.usefixtures("plugin")
def test_alerts_from_snapshots() -> None:
    snapshot = {
        "time": 1.0,
        "sample": 7,
        "cpu": {"percent": 97.5, "count": 2},
        "memory": {"used_percent": 50.0},
        "disks": [{"path": "/", "percent": 95.0}, {"path": "/x", "error": "gone"}],
        "load": [3.0, 1.0, 1.0],
        "processes": [{"pid": 1, "name": "busy", "cpu_percent": 180.0}],
    }
    pipeline = (
        headwater.Pipeline("alerts")
        .source("iterable", items=[snapshot, {"cpu": None, "disks": []}])
        .step("sysmon.alerts", load_per_cpu=1.0, process_cpu_percent=150)
        .sink("collect")
    )
    found = run_pipeline(pipeline).output
    assert [a["metric"] for a in found] == [
        "cpu.percent",
        "disk.percent",
        "load.per_cpu",
        "process.cpu_percent",
    ]
    assert found[0]["message"] == "CPU use at 97.5 (threshold 90)"
    assert found[2]["value"] == 1.5
    assert all(a["sample"] == 7 for a in found)


@pytest.mark.usefixtures("plugin")
def test_invalid_params() -> None:
    pipeline = headwater.Pipeline("bad").source("sysmon.status", interval=0).sink("collect")
    with pytest.raises(headwater.PipelineValidationError, match="interval"):
        run_pipeline(pipeline)
