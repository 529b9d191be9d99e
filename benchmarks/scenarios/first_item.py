"""``first-item``: how soon a fresh process delivers its first chunk, and import cost.

* ``headwater_run``: wall time from spawning ``headwater run FILE`` to the first line the
  pipeline's sink writes on stdout (the harness reads the child's stdout as it comes).
  The pipeline is ``range(1000) -> map(double) -> bench.lines``; ``bench.lines`` is the
  benchmark plugin's sink, discovered through a throwaway ``headwater`` entry point (a
  ``.dist-info`` directory in a temporary directory on ``PYTHONPATH``), exactly as an
  installed plugin would be. When the CLI does not exist yet, the same file is run with
  ``python -c "import headwater; headwater.run_sync(FILE)"`` (``headwater_run_sync``).
* ``import_headwater``: wall time of ``python -c "import headwater"``.
* ``import_headwater_importtime``: the cumulative figure of the top-level ``headwater``
  line of ``python -X importtime -c "import headwater"`` (the import alone, no
  interpreter start-up).
* ``headwater_run_importtime``: the imports of that same ``headwater run FILE`` under
  ``python -X importtime`` made before its sink's first line: the sum of the cumulative
  figures of its top-level imports (interpreter start-up excluded). The report's notes
  list the costliest top-level imports (median over the rounds), so that a module a
  command does not need shows up by name.
* ``dependencies_floor``: wall time of a ``python -c`` that imports and uses once what
  every ``headwater run`` needs before its first chunk: one pydantic model validated
  from PyYAML, the entry-point scan of ``importlib.metadata``, ``anyio.run`` on asyncio.
  No pipeline framework built on these libraries starts faster than that on the machine
  measured; the note subtracts it from the first chunk (headwater's own share).
* ``python_pass``: wall time of ``python -c pass``, the floor of any process.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..harness import (
    Column,
    Implementation,
    ResultMismatch,
    Sample,
    ScenarioReport,
    Settings,
    available,
    children_cpu_seconds,
    fmt_seconds,
    measure,
)
from ..plugin import LINE_MARKER
from ..procs import CHILD_TIMEOUT, child_env
from . import Progress

TITLE = "time to the first chunk of `headwater run`, and `import headwater`"
DESCRIPTION = (
    "Fresh processes: time from spawning `headwater run FILE` to the first line its sink "
    "writes, `import headwater` (wall and -X importtime), and `python -c pass`."
)

ITEMS = 1000
FIRST_CHUNK_LIMIT = 0.100
IMPORT_LIMIT = 0.150

PIPELINE_YAML = f"""\
name: bench-first-item
sources:
  numbers: {{action: range, params: {{stop: {ITEMS}}}}}
steps:
  - {{transformer: map, params: {{fn: "benchmarks.fns:double"}}}}
sinks:
  - {{sink: bench.lines}}
"""

DEPENDENCIES_FLOOR = """\
import asyncio, importlib.metadata
import anyio, yaml
from pydantic import BaseModel
class Spec(BaseModel):
    name: str
    stop: int
Spec.model_validate(yaml.safe_load("{name: x, stop: 3}"))
importlib.metadata.entry_points(group="headwater")
anyio.run(asyncio.sleep, 0)
"""
"""What any ``headwater run`` needs before its first chunk, used once (see above)."""

ENTRY_POINTS = "[headwater]\nbench = benchmarks.plugin\n"
METADATA = "Metadata-Version: 2.1\nName: headwater-bench-plugin\nVersion: 0.0.0\n"


@contextmanager
def workspace() -> Iterator[tuple[Path, dict[str, str]]]:
    """A temp dir with the pipeline file and the bench plugin's entry point; and the env."""
    with tempfile.TemporaryDirectory(prefix="headwater-bench-") as tmp:
        root = Path(tmp)
        site = root / "site"
        info = site / "headwater_bench_plugin-0.0.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(METADATA, encoding="utf-8")
        (info / "entry_points.txt").write_text(ENTRY_POINTS, encoding="utf-8")
        (root / "pipeline.yaml").write_text(PIPELINE_YAML, encoding="utf-8")
        yield root, child_env([site])


def run_command(pipeline: Path) -> tuple[str, list[str], str | None]:
    """``(implementation name, argv, note)`` for running ``pipeline`` in a fresh process."""
    script = Path(sys.executable).with_name("headwater")
    if available("headwater.cli"):
        if script.exists():
            return "headwater_run", [str(script), "run", str(pipeline)], None
        if available("headwater.__main__"):
            return (
                "headwater_run",
                [sys.executable, "-m", "headwater", "run", str(pipeline)],
                "measured with `python -m headwater run` (no `headwater` script found)",
            )
    code = "import sys, headwater; headwater.run_sync(sys.argv[1])"
    return (
        "headwater_run_sync",
        [sys.executable, "-c", code, str(pipeline)],
        'the `headwater run` CLI is not available yet: measured `python -c "import '
        'headwater; headwater.run_sync(FILE)"` instead (same pipeline, same discovery)',
    )


def first_chunk(argv: list[str], env: dict[str, str], cwd: Path) -> Callable[[], Sample]:
    """Spawn ``argv``; time the first sink line and the exit; check every line arrived."""

    def run() -> Sample:
        with tempfile.TemporaryFile() as errors:
            cpu_before = children_cpu_seconds()
            start = time.perf_counter()
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, env=env, cwd=cwd)
            killer = threading.Timer(CHILD_TIMEOUT, proc.kill)
            killer.start()
            first: float | None = None
            lines: list[bytes] = []
            marker = LINE_MARKER.encode()
            try:
                assert proc.stdout is not None
                for raw in proc.stdout:  # ends when the child closes stdout (exit or kill)
                    if marker in raw:
                        if first is None:
                            first = time.perf_counter() - start
                        lines.append(raw)
                code = proc.wait()
            finally:
                killer.cancel()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            total = time.perf_counter() - start
            cpu = _cpu_since(cpu_before)
            errors.seek(0)
            stderr = errors.read().decode(errors="replace").strip()
        if code != 0 or first is None:
            raise RuntimeError(
                f"{' '.join(argv)} exited with {code} after {len(lines)} sink lines:\n{stderr}"
            )
        expected = [f"{LINE_MARKER} {2 * i}" for i in range(ITEMS)]
        got = [raw.decode(errors="replace").strip() for raw in lines]
        if got != expected:
            raise ResultMismatch(
                f"the sink wrote {len(got)} lines, not the {ITEMS} expected (first: {got[:3]})"
            )
        return Sample({"seconds": first, "exit_seconds": total, **cpu}, len(got))

    return run


def wall(argv: list[str], env: dict[str, str], cwd: Path) -> Callable[[], Sample]:
    """Spawn ``argv`` and time it to exit."""

    def run() -> Sample:
        cpu_before = children_cpu_seconds()
        start = time.perf_counter()
        subprocess.run(
            argv, env=env, cwd=cwd, check=True, timeout=CHILD_TIMEOUT, stdout=subprocess.DEVNULL
        )
        seconds = time.perf_counter() - start
        return Sample({"seconds": seconds, "exit_seconds": seconds, **_cpu_since(cpu_before)})

    return run


def _cpu_since(before: float | None) -> dict[str, float]:
    """``{"cpu_seconds": ...}`` of the child reaped since ``before`` (empty if unknown)."""
    after = children_cpu_seconds()
    return {} if before is None or after is None else {"cpu_seconds": after - before}


def parse_importtime(stderr: str, module: str = "headwater") -> float:
    """Cumulative seconds of the top-level ``module`` line of ``-X importtime`` output."""
    for line in stderr.splitlines():
        # "import time:       self [us] |  cumulative | imported package"
        # the top-level import is the one indented by exactly one space
        parts = line.split("|")
        if (
            len(parts) == 3
            and line.startswith("import time:")
            and parts[2].strip() == module
            and not parts[2].startswith("  ")
        ):
            return int(parts[1].strip()) / 1e6
    raise RuntimeError(f"no top-level {module!r} line in -X importtime output:\n{stderr}")


def top_level_imports(stderr: str) -> dict[str, float]:
    """Cumulative seconds of each top-level import of ``-X importtime`` output (the lines
    indented by exactly one space), by module."""
    found: dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not line.startswith("import time:"):
            continue
        name = parts[2]
        if name.startswith("  ") or not name.strip():
            continue
        try:
            found[name.strip()] = int(parts[1].strip()) / 1e6
        except ValueError:  # the header line
            continue
    return found


def run_importtime(
    argv: list[str], env: dict[str, str], cwd: Path, seen: list[dict[str, float]]
) -> Callable[[], Sample]:
    """``python -X importtime`` of the command ``argv`` (a ``headwater run``): the total
    of the top-level imports made before its sink's first line (stdout and stderr share
    one unbuffered pipe, so the order is kept; what the summary imports after the run
    does not count); each round's table is appended to ``seen``."""
    if Path(argv[0]).name == "headwater":
        argv = [sys.executable, "-m", "headwater", *argv[1:]]

    def run() -> Sample:
        proc = subprocess.run(
            [argv[0], "-u", "-X", "importtime", *argv[1:]],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=True,
            timeout=CHILD_TIMEOUT,
        )
        before, marker, _ = proc.stdout.partition(LINE_MARKER)
        if not marker:
            raise RuntimeError(f"{' '.join(argv)} wrote no sink line:\n{proc.stdout[-2000:]}")
        table = top_level_imports(before)
        seen.append(table)
        return Sample({"seconds": sum(table.values())})

    return run


def costliest(tables: list[dict[str, float]], count: int = 12) -> list[tuple[str, float]]:
    """The ``count`` top-level imports with the highest median over ``tables``."""
    names = {name for table in tables for name in table}
    medians = {name: statistics.median(t.get(name, 0.0) for t in tables) for name in names}
    return sorted(medians.items(), key=lambda kv: -kv[1])[:count]


def importtime(env: dict[str, str], cwd: Path) -> Callable[[], Sample]:
    """``python -X importtime -c "import headwater"``, parsed."""

    def run() -> Sample:
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import headwater"],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=CHILD_TIMEOUT,
        )
        return Sample({"seconds": parse_importtime(proc.stderr)})

    return run


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Measure every process; targets: first chunk < 100 ms, import < 150 ms."""
    rounds = settings.pick_rounds(full=10, quick=5)
    warmup = settings.pick_warmup(1)
    with workspace() as (root, env):
        name, argv, note = run_command(root / "pipeline.yaml")
        py = sys.executable
        tables: list[dict[str, float]] = []
        impls = [
            Implementation(
                name,
                first_chunk(argv, env, root),
                compare=False,
                description="spawn -> first sink line",
            ),
            Implementation(
                f"{name}_importtime",
                run_importtime(argv, env, root, tables),
                compare=False,
                description="its imports before the first chunk (-X importtime)",
            ),
            Implementation(
                "import_headwater",
                wall([py, "-c", "import headwater"], env, root),
                compare=False,
                description='python -c "import headwater"',
            ),
            Implementation(
                "import_headwater_importtime",
                importtime(env, root),
                compare=False,
                description="-X importtime, cumulative",
            ),
            Implementation(
                "dependencies_floor",
                wall([py, "-c", DEPENDENCIES_FLOOR], env, root),
                compare=False,
                description="pydantic + PyYAML + entry points + anyio.run",
            ),
            Implementation(
                "python_pass",
                wall([py, "-c", "pass"], env, root),
                compare=False,
                description="python -c pass",
            ),
        ]
        measured = measure(impls, rounds=rounds, warmup=warmup, progress=progress)
    report = ScenarioReport(
        name="first-item",
        title=TITLE,
        params={
            "rounds": rounds,
            "warm-up": warmup,
            "pipeline": f"range({ITEMS}) -> map -> bench.lines (stdout)",
        },
        measured=measured,
        columns=[
            Column("seconds", "time", fmt_seconds),
            Column("exit_seconds", "process exit", fmt_seconds, spread=False),
            Column("cpu_seconds", "process cpu", fmt_seconds, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="python_pass",
        ratio_metric="seconds",
        ratio_header="vs python -c pass",
        show_descriptions=True,
    )
    report.targets = [
        report.target_below(
            "first chunk at the sink after process start",
            name,
            "seconds",
            FIRST_CHUNK_LIMIT,
            fmt_seconds,
        ),
        report.target_below(
            "import headwater (-X importtime)",
            "import_headwater_importtime",
            "seconds",
            IMPORT_LIMIT,
            fmt_seconds,
        ),
    ]
    imp = report.median("import_headwater", "seconds")
    bare = report.median("python_pass", "seconds")
    if imp is not None and bare is not None:
        report.notes.append(
            f"import headwater, wall minus python -c pass: {fmt_seconds(imp - bare)}"
        )
    first = report.median(name, "seconds")
    floor = report.median("dependencies_floor", "seconds")
    if first is not None and floor is not None:
        report.notes.append(
            f"first chunk minus the dependencies' floor (headwater's own share): "
            f"{fmt_seconds(first - floor)}; the floor alone is {fmt_seconds(floor)}"
        )
    if tables:
        shown = ", ".join(f"{mod} {fmt_seconds(sec)}" for mod, sec in costliest(tables))
        report.notes.append(f"costliest top-level imports of {name}: {shown}")
    if note is not None:
        report.notes.append(note)
    return report
