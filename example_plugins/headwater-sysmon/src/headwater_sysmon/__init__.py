"""headwater-sysmon: stream system status at an interval, from ``/proc``.

An example of a *monitoring* plugin. It contributes:

``sysmon.status`` (action)
    Every ``interval`` seconds, one snapshot: CPU use (overall and per CPU), memory,
    load averages, disk usage of chosen paths and the busiest processes (CPU share,
    resident memory, threads). Figures come from ``/proc`` (Linux), read in a worker
    thread; no psutil needed. Elsewhere the snapshot says what is unavailable (``notes``)
    and keeps what the standard library can tell (load, disks).
``sysmon.alerts`` (flat_map transformer)
    Turns snapshots into alerts when a figure crosses its threshold.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import headwater
from headwater import Register
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AlertParams",
    "Sampler",
    "StatusParams",
    "alerts",
    "register_actions",
    "register_transformers",
    "status",
]


class StatusParams(BaseModel):
    """Params of ``sysmon.status``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    interval: float = Field(1.0, gt=0, le=3600, description="Seconds between snapshots.")
    count: int | None = Field(
        None, ge=1, description="Snapshots to take (None: until the run is cancelled)."
    )
    disks: list[str] = Field(
        default_factory=lambda: ["/"], description="Paths whose file system usage to report."
    )
    top: int = Field(5, ge=0, le=100, description="Busiest processes to report (0: none).")
    pids: list[int] = Field(
        default_factory=list, description="Processes to report in every snapshot."
    )
    per_cpu: bool = Field(True, description="Also report the use of every CPU.")
    proc_root: str = Field(
        "/proc", description="Where the proc file system is mounted (tests use a fake one)."
    )


# ---------------------------------------------------------------------------------------
# Reading /proc
# ---------------------------------------------------------------------------------------


def _cpu_times(text: str) -> dict[str, tuple[int, int]]:
    """``{"cpu": (busy, total), "cpu0": ...}`` from ``/proc/stat`` (in clock ticks)."""
    times: dict[str, tuple[int, int]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        name, *fields = line.split()
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        values += [0] * (8 - len(values))
        idle = values[3] + values[4]
        total = sum(values)
        times[name] = (total - idle, total)
    return times


def _percent(now: tuple[int, int], before: tuple[int, int]) -> float | None:
    busy = now[0] - before[0]
    total = now[1] - before[1]
    return round(100.0 * busy / total, 1) if total > 0 else None


def _meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` values in bytes."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            values[key] = int(parts[0]) * scale
    return values


@dataclass(frozen=True, slots=True)
class _ProcTimes:
    name: str
    state: str
    cpu_ticks: int
    rss_pages: int
    threads: int


def _proc_stat(text: str) -> _ProcTimes:
    """One ``/proc/PID/stat`` line; the name may contain spaces and parentheses."""
    head, _, rest = text.rpartition(")")
    name = head.partition("(")[2]
    fields = rest.split()
    # fields[0] is field 3 of proc(5): state; utime 14, stime 15, threads 20, rss 24
    return _ProcTimes(
        name=name,
        state=fields[0],
        cpu_ticks=int(fields[11]) + int(fields[12]),
        rss_pages=int(fields[21]),
        threads=int(fields[17]),
    )


def _sysconf(name: str, default: int) -> int:
    try:
        value = os.sysconf(name)
    except (AttributeError, ValueError, OSError):
        return default
    return value if value > 0 else default


class Sampler:
    """Takes snapshots; call :meth:`prime` once, then :meth:`sample` (blocking, threads).

    CPU shares are computed from the difference between two readings, so every snapshot
    covers the time since the previous one.
    """

    def __init__(self, params: StatusParams) -> None:
        self.params = params
        self.proc = Path(params.proc_root)
        self.linux = (self.proc / "stat").is_file()
        self.ticks = _sysconf("SC_CLK_TCK", 100)
        self.page = _sysconf("SC_PAGE_SIZE", 4096)
        self._cpu: dict[str, tuple[int, int]] = {}
        self._procs: dict[int, _ProcTimes] = {}
        self._at = 0.0

    def _read(self, *parts: str) -> str | None:
        try:
            return self.proc.joinpath(*parts).read_text()
        except OSError:
            return None

    def _processes(self) -> dict[int, _ProcTimes]:
        found: dict[int, _ProcTimes] = {}
        try:
            entries = os.listdir(self.proc)
        except OSError:
            return found
        for entry in entries:
            if not entry.isdigit():
                continue
            text = self._read(entry, "stat")
            if text is None:
                continue  # the process ended meanwhile
            try:
                found[int(entry)] = _proc_stat(text)
            except (IndexError, ValueError):
                continue
        return found

    def prime(self) -> None:
        """Take the first reading (no snapshot: shares need two readings)."""
        self._at = time.monotonic()
        if self.linux:
            self._cpu = _cpu_times(self._read("stat") or "")
            if self.params.top or self.params.pids:
                self._procs = self._processes()

    def sample(self) -> dict[str, Any]:
        """A snapshot of the figures since the previous reading."""
        now = time.monotonic()
        elapsed = max(now - self._at, 1e-9)
        self._at = now
        notes: list[str] = []
        snapshot: dict[str, Any] = {
            "time": time.time(),
            "platform": sys.platform,
            "interval": round(elapsed, 3),
        }
        if self.linux:
            snapshot["cpu"] = self._cpu_figures()
            snapshot["memory"] = self._memory()
            snapshot["uptime"] = self._uptime()
        else:
            snapshot.update(cpu=None, memory=None, uptime=None)
            notes.append(f"no {self.proc}/stat: CPU, memory and process figures unavailable")
        snapshot["load"] = self._load()
        snapshot["disks"] = [self._disk(path) for path in self.params.disks]
        snapshot["processes"] = self._top(elapsed) if self.linux else None
        snapshot["notes"] = notes
        return snapshot

    def _cpu_figures(self) -> dict[str, Any]:
        current = _cpu_times(self._read("stat") or "")
        before, self._cpu = self._cpu, current
        figures: dict[str, Any] = {"count": sum(1 for n in current if n != "cpu")}
        overall = current.get("cpu")
        figures["percent"] = (
            _percent(overall, before["cpu"]) if overall and "cpu" in before else None
        )
        if self.params.per_cpu:
            figures["per_cpu"] = [
                _percent(current[name], before[name]) if name in before else None
                for name in sorted((n for n in current if n != "cpu"), key=lambda n: int(n[3:]))
            ]
        return figures

    def _memory(self) -> dict[str, Any] | None:
        info = _meminfo(self._read("meminfo") or "")
        total = info.get("MemTotal")
        if not total:
            return None
        available = info.get("MemAvailable", info.get("MemFree", 0))
        swap_total = info.get("SwapTotal", 0)
        return {
            "total": total,
            "available": available,
            "used_percent": round(100.0 * (total - available) / total, 1),
            "swap_total": swap_total,
            "swap_used": swap_total - info.get("SwapFree", swap_total),
        }

    def _uptime(self) -> float | None:
        text = self._read("uptime")
        try:
            return float(text.split()[0]) if text else None
        except (IndexError, ValueError):
            return None

    def _load(self) -> list[float] | None:
        text = self._read("loadavg")
        if text:
            try:
                return [float(v) for v in text.split()[:3]]
            except ValueError:
                pass
        try:
            return [round(v, 2) for v in os.getloadavg()]
        except (AttributeError, OSError):
            return None  # e.g. Windows

    @staticmethod
    def _disk(path: str) -> dict[str, Any]:
        try:
            usage = shutil.disk_usage(path)
        except OSError as exc:
            return {"path": path, "error": exc.strerror or str(exc)}
        room = usage.used + usage.free
        return {
            "path": path,
            "total": usage.total,
            "used": usage.used,
            "free": usage.free,
            "percent": round(100.0 * usage.used / room, 1) if room else None,
        }

    def _top(self, elapsed: float) -> list[dict[str, Any]]:
        wanted = self.params.top
        pinned = set(self.params.pids)
        if not wanted and not pinned:
            return []
        current = self._processes()
        before, self._procs = self._procs, current
        rows: list[dict[str, Any]] = []
        for pid, now in current.items():
            prev = before.get(pid)
            ticks = now.cpu_ticks - prev.cpu_ticks if prev is not None else 0
            rows.append(
                {
                    "pid": pid,
                    "name": now.name,
                    "state": now.state,
                    "cpu_percent": round(100.0 * ticks / self.ticks / elapsed, 1),
                    "rss": now.rss_pages * self.page,
                    "threads": now.threads,
                }
            )
        rows.sort(key=lambda r: (-r["cpu_percent"], -r["rss"], r["pid"]))
        chosen = rows[:wanted]
        chosen += [r for r in rows[wanted:] if r["pid"] in pinned]
        return chosen


# ---------------------------------------------------------------------------------------
# sysmon.status
# ---------------------------------------------------------------------------------------


@headwater.action(
    "sysmon.status",
    params=StatusParams,
    output="{time, sample, cpu, memory, load, disks, processes, notes, ...} per interval",
    capabilities=("streaming", "progress"),
)
async def status(
    params: StatusParams, ctx: headwater.StreamContext
) -> AsyncIterator[dict[str, Any]]:
    """Stream a snapshot of the system's status every ``interval`` seconds.

    Snapshots are taken on a fixed schedule (no drift); a slow reading delays only the
    snapshot it belongs to. Runs until ``count`` snapshots or until the run is cancelled.
    """
    sampler = Sampler(params)
    taken = 0
    try:
        await anyio.to_thread.run_sync(sampler.prime)
        if not sampler.linux:
            ctx.status(f"{params.proc_root} not found: reporting load and disks only")
        next_at = anyio.current_time()
        while params.count is None or taken < params.count:
            next_at += params.interval
            now = anyio.current_time()
            if next_at < now - params.interval:  # fell far behind: do not burst
                next_at = now
            await anyio.sleep(max(0.0, next_at - now))
            if ctx.cancelled:
                return
            snapshot = await anyio.to_thread.run_sync(sampler.sample)
            taken += 1
            snapshot["sample"] = taken
            ctx.progress(taken, params.count)
            yield snapshot
    finally:
        ctx.logger.debug("sysmon.status took %d snapshots", taken)


# ---------------------------------------------------------------------------------------
# sysmon.alerts
# ---------------------------------------------------------------------------------------


class AlertParams(BaseModel):
    """Params of ``sysmon.alerts``."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    cpu_percent: float | None = Field(90.0, ge=0, description="Overall CPU use threshold.")
    memory_percent: float | None = Field(90.0, ge=0, description="Memory use threshold.")
    disk_percent: float | None = Field(90.0, ge=0, description="Disk use threshold (any disk).")
    load_per_cpu: float | None = Field(
        None, ge=0, description="1-minute load average divided by the number of CPUs."
    )
    process_cpu_percent: float | None = Field(
        None, ge=0, description="CPU share of any single reported process."
    )


def _alert(
    snapshot: dict[str, Any], metric: str, value: float, limit: float, what: str
) -> dict[str, Any]:
    return {
        "time": snapshot.get("time"),
        "sample": snapshot.get("sample"),
        "metric": metric,
        "value": value,
        "threshold": limit,
        "message": f"{what} at {value:g} (threshold {limit:g})",
    }


def _over(value: Any, limit: float | None) -> bool:
    return limit is not None and isinstance(value, int | float) and value >= limit


@headwater.transformer(
    "sysmon.alerts",
    kind="flat_map",
    params=AlertParams,
    output="{time, sample, metric, value, threshold, message} per crossed threshold",
)
def alerts(snapshot: Any, params: AlertParams) -> Iterator[dict[str, Any]]:
    """Emit an alert for every figure of a ``sysmon.status`` snapshot over its threshold."""
    if not isinstance(snapshot, dict):
        return
    cpu = snapshot.get("cpu") or {}
    if _over(cpu.get("percent"), params.cpu_percent):
        assert params.cpu_percent is not None
        yield _alert(snapshot, "cpu.percent", cpu["percent"], params.cpu_percent, "CPU use")
    memory = snapshot.get("memory") or {}
    if _over(memory.get("used_percent"), params.memory_percent):
        assert params.memory_percent is not None
        value = memory["used_percent"]
        yield _alert(snapshot, "memory.used_percent", value, params.memory_percent, "memory use")
    for disk in snapshot.get("disks") or []:
        if _over(disk.get("percent"), params.disk_percent):
            assert params.disk_percent is not None
            what = f"disk {disk['path']} use"
            yield _alert(snapshot, "disk.percent", disk["percent"], params.disk_percent, what)
    load = snapshot.get("load")
    count = cpu.get("count") or os.cpu_count() or 1
    if load and params.load_per_cpu is not None:
        per_cpu = round(load[0] / count, 2)
        if per_cpu >= params.load_per_cpu:
            yield _alert(snapshot, "load.per_cpu", per_cpu, params.load_per_cpu, "load per CPU")
    for proc in snapshot.get("processes") or []:
        if _over(proc.get("cpu_percent"), params.process_cpu_percent):
            assert params.process_cpu_percent is not None
            what = f"process {proc['pid']} ({proc['name']}) CPU use"
            limit = params.process_cpu_percent
            yield _alert(snapshot, "process.cpu_percent", proc["cpu_percent"], limit, what)


@headwater.hookimpl
def register_actions(register: Register) -> None:
    """Contribute ``sysmon.status``."""
    register(status)


@headwater.hookimpl
def register_transformers(register: Register) -> None:
    """Contribute ``sysmon.alerts``."""
    register(alerts)
