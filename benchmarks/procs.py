"""Helpers for scenarios that measure child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "child_env", "run_json_child"]

REPO_ROOT = Path(__file__).resolve().parent.parent
"""The checkout holding the ``benchmarks`` package (computed, never hard-coded)."""

CHILD_TIMEOUT = 600.0
"""Seconds a child may take before it is killed and the scenario aborted."""


def child_env(extra_path: Sequence[Path | str] = (), **overrides: str) -> dict[str, str]:
    """The environment for a child: ``benchmarks`` importable, output unbuffered."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_path] + [str(REPO_ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONSTARTUP", None)
    # Measure what users get: an installed package has its bytecode cached. With
    # PYTHONDONTWRITEBYTECODE inherited (CI sets it), every child would compile
    # headwater's modules from source on each start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.update(overrides)
    return env


def run_json_child(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = CHILD_TIMEOUT
) -> dict[str, Any]:
    """Run ``python ARGS``; its last stdout line must be a JSON object, returned."""
    proc = subprocess.run(
        [sys.executable, *args],
        env=dict(env) if env is not None else child_env(),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"child {' '.join(args)} exited with {proc.returncode}:\n{proc.stderr.strip()}"
        )
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"child {' '.join(args)} printed nothing:\n{proc.stderr.strip()}")
    data = json.loads(lines[-1])
    if not isinstance(data, dict):
        raise RuntimeError(f"child {' '.join(args)} printed {lines[-1]!r}, not a JSON object")
    return data
