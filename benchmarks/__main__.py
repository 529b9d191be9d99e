"""``python -m benchmarks [--quick] [--json FILE] [SCENARIO...]``.

Runs the named scenarios (all of them when none is named) one after the other, prints
each one's table as soon as it is done, and optionally writes every number to a JSON
file. Exit status: 0 when every scenario ran (missed targets do not fail the run: CI
runs ``--quick`` to catch breakage, not to gate speed), 1 when a scenario was aborted
(implementations disagreed, or an error), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import ResultMismatch, Settings, render, to_json
from .scenarios import SCENARIOS, load

BENCH_CALLABLES = ("benchmarks.fns", "benchmarks.scenarios.checkpoint")
"""Modules whose functions the benchmark pipelines name (the sandbox allows them)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Side-by-side benchmarks of headwater against its peers.",
    )
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="SCENARIO",
        help=f"scenarios to run (default: all): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller inputs and fewer rounds (what CI runs)"
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="write {scenario: {implementation: {metric: number}}} here",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    tiny = parser.add_argument_group("overrides (for smoke tests and experiments)")
    tiny.add_argument("--rounds", type=int, metavar="R", help="measured rounds per scenario")
    tiny.add_argument("--warmup", type=int, metavar="W", help="warm-up rounds per scenario")
    tiny.add_argument("--n", type=int, metavar="N", help="items per run (scenarios with an N)")
    tiny.add_argument(
        "--plugins",
        type=int,
        metavar="K",
        help="plugin distributions installed by 'discovery' (default 50)",
    )
    return parser


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[K  {message}")
        sys.stderr.flush()


def _clear_progress() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for name in SCENARIOS:
            module = load(name)
            print(f"{name}: {module.TITLE}\n    {module.DESCRIPTION}")
        return 0
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    names = list(dict.fromkeys(args.scenarios)) or list(SCENARIOS)
    # the scenarios write in temporary folders: a file root for their engines and children
    roots = os.environ.get("HEADWATER_ROOTS") or os.getcwd()
    os.environ["HEADWATER_ROOTS"] = os.pathsep.join([roots, tempfile.gettempdir()])
    # the pipelines name their functions by import path, as a YAML file would
    allowed = [os.environ.get("HEADWATER_ALLOW_CALLABLES"), *BENCH_CALLABLES]
    os.environ["HEADWATER_ALLOW_CALLABLES"] = ",".join(entry for entry in allowed if entry)
    settings = Settings(
        quick=args.quick, rounds=args.rounds, warmup=args.warmup, n=args.n, plugins=args.plugins
    )
    mode = "quick" if args.quick else "full"
    print(
        f"headwater benchmarks ({mode}) on Python {platform.python_version()} "
        f"({platform.python_implementation()}, {platform.machine()}, {sys.platform})"
    )
    results: dict[str, Any] = {}
    failed: list[str] = []
    started = time.perf_counter()
    for name in names:
        print()
        t0 = time.perf_counter()
        try:
            report = load(name).run(settings, _progress)
        except ResultMismatch as exc:
            _clear_progress()
            failed.append(name)
            print(f"!! {name}: ABORTED, implementations disagree: {exc}", flush=True)
            continue
        except Exception:
            _clear_progress()
            failed.append(name)
            print(f"!! {name}: ABORTED by an error:\n{traceback.format_exc()}", flush=True)
            continue
        _clear_progress()
        print(render(report))
        print(f"({name} took {time.perf_counter() - t0:.1f} s)", flush=True)
        results[name] = to_json(report)
    print(f"\nall done in {time.perf_counter() - started:.1f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
