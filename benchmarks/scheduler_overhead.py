"""Scheduler overhead: trivial pipeline runs per second through ``headwater.Scheduler``.

``N`` runs (10,000; 1,000 with ``--quick``) form a random DAG: each run depends on up to
three earlier runs, has a random priority and, one run in four, needs a unit of one of
two named resources. Every run is the smallest pipeline there is (a one-item
``iterable`` source into a ``null`` sink), so the figure is what the scheduler plus the
runtime cost per run: submission (validation), dependency bookkeeping, the priority
queue, resource accounting, the run's tasks and its events.

Standalone::

    python -m benchmarks.scheduler_overhead [--quick] [--backend asyncio|trio] [--json]

or from code: ``run(quick=True)`` returns
``{"scheduler": {"runs_per_s": ..., "seconds": ..., ...}}``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

import anyio

FULL_N = 10_000
QUICK_N = 1_000
CONCURRENCY = 8
RESOURCES = {"db": 2, "gpu": 1}
SEED = 20240611


def _requests(n: int, seed: int) -> list[dict[str, Any]]:
    """A reproducible random DAG of ``n`` runs (dependencies point to earlier runs)."""
    rng = random.Random(seed)
    jobs: list[dict[str, Any]] = []
    for i in range(n):
        k = rng.randint(0, min(3, i))
        deps = sorted({f"r{j}" for j in rng.sample(range(max(0, i - 50), i), k)}) if k else []
        needs = {rng.choice(sorted(RESOURCES)): 1} if rng.random() < 0.25 else {}
        jobs.append(
            {"name": f"r{i}", "priority": rng.randint(0, 9), "depends_on": deps, "resources": needs}
        )
    return jobs


async def _measure(n: int, seed: int) -> dict[str, float]:
    from headwater.core.plugins import PluginManager
    from headwater.core.scheduler import Scheduler

    plugins = PluginManager().load()
    spec = {
        "name": "tiny",
        "sources": {"one": {"action": "iterable", "params": {"items": [1]}}},
        "sinks": [{"sink": "null"}],
    }
    jobs = _requests(n, seed)
    started = time.perf_counter()
    async with Scheduler(concurrency=CONCURRENCY, resources=RESOURCES, plugins=plugins) as s:
        for job in jobs:
            s.submit(
                job["name"],
                spec,
                priority=job["priority"],
                depends_on=job["depends_on"],
                resources=job["resources"],
            )
        submitted = time.perf_counter()
    seconds = time.perf_counter() - started
    counts = s.counts_by_state()
    if counts["succeeded"] != n:
        raise RuntimeError(f"expected {n} successful runs, got {counts}")
    return {
        "runs": float(n),
        "seconds": seconds,
        "runs_per_s": n / seconds,
        "us_per_run": seconds / n * 1e6,
        "submit_seconds": submitted - started,
    }


def run(quick: bool, *, backend: str = "asyncio", seed: int = SEED) -> dict[str, Any]:
    """Run the benchmark once; returns ``{"scheduler": {metric: number}}``."""
    n = QUICK_N if quick else FULL_N
    return {"scheduler": anyio.run(_measure, n, seed, backend=backend)}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; prints the figures (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scheduler_overhead")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_N:,} runs, not {FULL_N:,}")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    args = parser.parse_args(argv)
    result = run(args.quick, backend=args.backend)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return 0
    m = result["scheduler"]
    print(
        f"scheduler ({args.backend}): {int(m['runs']):,} runs in {m['seconds']:.2f} s = "
        f"{m['runs_per_s']:,.0f} runs/s ({m['us_per_run']:.0f} us/run; "
        f"submitting took {m['submit_seconds']:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
