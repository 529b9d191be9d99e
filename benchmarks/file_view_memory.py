"""Peak RSS of ``file.view`` over a 2 GB sparse file: constant memory, whatever the size.

``python -m benchmarks.file_view_memory [--size-gb 2 | --size-mb N] [--limit-mb 100]``

A sparse file (no disk space used; reads return zeros) is viewed end to end in fresh
child processes, one per variant:

* ``chunks``: ``mode: chunks`` into a sink that counts the bytes;
* ``lines``: ``mode: lines``; the file is one 2 GB line (no newline at all), the worst
  case for a line reader: it must come out in bounded ``partial`` pieces;
* ``chunks_slow_sink`` / ``lines_slow_sink``: the sink sleeps 20 ms per batch, so every
  channel stays full (backpressure): the peak is the worst case of the bounded channels
  (they bound the number of items in flight; the default item sizes bound the bytes).

Each child reads its own peak RSS, ``VmHWM`` from ``/proc/self/status`` (not
``ru_maxrss``, which Linux carries over from the parent across fork/exec), once after
imports and plugin loading (the fixed footprint) and once after the run. The script
prints a table, optionally a JSON line (``--json``), and exits 1 when a peak reaches
the limit (default 100 MB) or a variant did not see every byte. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .procs import run_json_child

__all__ = ["main", "vm_hwm_bytes"]

MB = 1_000_000
"""The limit is in decimal megabytes, as in the other memory benchmarks."""
MiB = 1024 * 1024

VARIANTS: dict[str, dict[str, Any]] = {
    "chunks": {"mode": "chunks", "slow": 0.0},
    "lines": {"mode": "lines", "slow": 0.0},
    "chunks_slow_sink": {"mode": "chunks", "slow": 0.02},
    "lines_slow_sink": {"mode": "lines", "slow": 0.02},
}


def vm_hwm_bytes() -> int:
    """This process's peak resident set size (``VmHWM``), in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# -- child ---------------------------------------------------------------------------------


def _child(path: str, mode: str, slow: float) -> dict[str, Any]:
    """Run ``file.view`` over ``path`` into a byte-counting sink; report peaks and counts."""
    import anyio

    import headwater
    from headwater.builtin_plugins.files import view as files

    class ByteCount:
        """Counts the bytes (characters: the file is ASCII NULs) of every item."""

        def __init__(self) -> None:
            self.seen = 0
            self.items = 0

        async def write(self, batch: list[dict[str, Any]]) -> None:
            for item in batch:
                self.seen += len(item["data"] if "data" in item else item["text"])
            self.items += len(batch)
            if slow:
                await anyio.sleep(slow)

        async def close(self, error: BaseException | None) -> dict[str, int]:
            return {"bytes": self.seen, "items": self.items}

    class Bench:
        @staticmethod
        @headwater.hookimpl
        def register_sinks(register: Any) -> None:
            register(headwater.sink("bench.bytes")(ByteCount))

    plugins = headwater.PluginManager().load()
    if "headwater.files" not in plugins.plugins:  # before the entry point is declared
        assert plugins.register(files, "headwater.files"), plugins.failures
    assert plugins.register(Bench, "bench"), plugins.failures
    pipeline = headwater.Pipeline("file-view-memory").source("file.view", path=path, mode=mode)
    pipeline = pipeline.sink("bench.bytes")
    baseline = vm_hwm_bytes()
    started = time.perf_counter()
    # the file lives in a temporary folder: the sandbox's one root
    policy = headwater.SandboxPolicy(roots=(Path(path).parent,))
    result = pipeline.run_sync(engine=headwater.Engine(plugin_manager=plugins, policy=policy))
    seconds = time.perf_counter() - started
    return {
        "mode": mode,
        "slow_sink_seconds": slow,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": vm_hwm_bytes(),
        "bytes_seen": result.output["bytes"],
        "items": result.output["items"],
        "seconds": seconds,
    }


# -- parent --------------------------------------------------------------------------------


def _warm_page_cache(path: str) -> None:
    """Read the file once, so that no variant pays alone for the first read of the holes.

    (Reading a hole the first time makes the kernel fill page-cache pages with zeros;
    that is system time, not the viewer's, and not part of any process's RSS.)
    """
    buffer = bytearray(8 * MiB)
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.file_view_memory",
        description="Peak RSS of file.view over a large sparse file (Linux).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--size-gb", type=float, default=2.0, help="file size in GiB (default 2)")
    size.add_argument("--size-mb", type=int, help="file size in MiB (for quick runs)")
    parser.add_argument(
        "--limit-mb", type=float, default=100.0, help="peak RSS limit, decimal MB (default 100)"
    )
    parser.add_argument(
        "--variant",
        action="append",
        choices=sorted(VARIANTS),
        help="run only this variant (repeatable; default: all)",
    )
    parser.add_argument("--json", action="store_true", help="also print the report as JSON")
    parser.add_argument(
        "--child", nargs=3, metavar=("PATH", "MODE", "SLOW"), help=argparse.SUPPRESS
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Create the sparse file, measure every variant in a child, print the report."""
    args = _parser().parse_args(argv)
    if args.child:
        path, mode, slow = args.child
        print(json.dumps(_child(path, mode, float(slow))))
        return 0
    if not Path("/proc/self/status").exists():
        print("file_view_memory needs Linux (/proc/self/status)", file=sys.stderr)
        return 2
    size = args.size_mb * MiB if args.size_mb is not None else int(args.size_gb * 1024 * MiB)
    names = args.variant or list(VARIANTS)
    report: dict[str, Any] = {"size_bytes": size, "limit_mb": args.limit_mb, "modes": {}}
    ok = True
    with tempfile.TemporaryDirectory(prefix="hw-file-view-") as tmp:
        path = os.path.join(tmp, "sparse.bin")
        with open(path, "wb") as handle:
            handle.truncate(size)  # sparse: no blocks allocated, reads give zeros
        _warm_page_cache(path)
        print(f"file.view over a {size / 2**30:.2f} GiB sparse file", file=sys.stderr)
        for name in names:
            variant = VARIANTS[name]
            data = run_json_child(
                [
                    "-m",
                    "benchmarks.file_view_memory",
                    "--child",
                    path,
                    variant["mode"],
                    str(variant["slow"]),
                ]
            )
            peak_mb = data["peak_rss_bytes"] / MB
            data["peak_rss_mb"] = round(peak_mb, 1)
            data["baseline_rss_mb"] = round(data["baseline_rss_bytes"] / MB, 1)
            data["throughput_mb_s"] = round(size / MB / max(data["seconds"], 1e-9), 1)
            passed = peak_mb < args.limit_mb and data["bytes_seen"] == size
            data["passed"] = passed
            ok = ok and passed
            # ``modes`` is keyed by variant; "chunks" and "lines" are the plain modes
            report["modes"][name] = data
            print(
                f"  {name:<17} peak RSS {peak_mb:6.1f} MB (after imports "
                f"{data['baseline_rss_mb']:5.1f} MB)  {data['items']:>9,} items  "
                f"{data['seconds']:6.2f}s  {data['throughput_mb_s']:8.1f} MB/s  "
                f"{'OK' if passed else 'FAILED'} (limit {args.limit_mb:g} MB)",
                file=sys.stderr,
            )
    if args.json:
        print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
