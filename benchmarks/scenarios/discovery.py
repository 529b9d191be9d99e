"""``discovery``: ``headwater plugins --json`` with 50 plugin distributions vs none.

Two throwaway virtual environments are made in a temporary directory, identical but for
the plugins: ``python -m venv --system-site-packages --without-pip``, plus a ``.pth``
file that adds the running interpreter's site-packages (where headwater and its
dependencies live; ``--system-site-packages`` alone would only reach the *base*
interpreter's, since this harness usually runs from a virtual environment itself). In
one of them, K generated distributions (default 50), each a module with one action and
a ``[project.entry-points.headwater]`` entry, are installed with
``pip install --no-deps --no-build-isolation --no-index``. Nothing is cached: the
environments live and die with the scenario.
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
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
from ..procs import CHILD_TIMEOUT, child_env
from . import Progress

TITLE = "`headwater plugins --json` with 50 installed plugin distributions vs none"
DESCRIPTION = (
    "Creates two temporary virtual environments, installs K tiny plugin distributions "
    "(one action each) into one with pip, and times `headwater plugins --json` in both."
)

DEFAULT_PLUGINS = 50
RATIO_LIMIT = 2.0
PREFIX = "hwbench_p"

PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{dist}"
version = "0.0.1"
description = "A generated headwater plugin for the discovery benchmark."
requires-python = ">=3.11"
dependencies = ["headwater"]

[project.entry-points.headwater]
{module} = "{module}"

[tool.hatch.build.targets.wheel]
packages = ["{module}"]
"""

MODULE = '''\
"""Generated plugin {module}: one action."""

from pydantic import BaseModel

import headwater


class CountParams(BaseModel):
    stop: int = 3


@headwater.action("{module}.count", params=CountParams)
async def count(params: CountParams, ctx: headwater.StreamContext):
    """Count from 0 to stop."""
    for i in range(params.stop):
        yield i


@headwater.hookimpl
def register_actions(register):
    register(count)
'''

FALLBACK = (
    "import json, headwater; pm = headwater.Engine().load(); "
    "print(json.dumps({'plugins': [{'name': n} for n in pm.plugins], "
    "'failures': [f.to_dict() for f in pm.failures]}))"
)


def _run(
    argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False, env=env, cwd=cwd
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def make_venv(path: Path) -> Path:
    """A venv at ``path`` that also sees this interpreter's site-packages; its python."""
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)])
    python = path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    parents = dict.fromkeys(
        [
            *site.getsitepackages(),
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"],
        ]
    )
    lines = [f"import site; site.addsitedir({p!r})" for p in parents if Path(p).is_dir()]
    (Path(purelib) / "_headwater_bench_parent.pth").write_text(
        "\n".join(lines) + "\n", encoding="utf-8"
    )
    return python


def write_plugins(root: Path, count: int) -> list[Path]:
    """Generate ``count`` plugin projects under ``root``; return their directories."""
    dirs = []
    for i in range(count):
        module = f"{PREFIX}{i:03d}"
        project = root / module
        (project / module).mkdir(parents=True)
        (project / "pyproject.toml").write_text(
            PYPROJECT.format(dist=module.replace("_", "-"), module=module), encoding="utf-8"
        )
        (project / module / "__init__.py").write_text(
            MODULE.format(module=module), encoding="utf-8"
        )
        dirs.append(project)
    return dirs


def plugins_command(python: Path) -> tuple[list[str], str | None]:
    """``headwater plugins --json`` for the venv's python, or the fallback; and a note."""
    if available("headwater.__main__"):
        return [str(python), "-m", "headwater", "plugins", "--json"], None
    if available("headwater.cli"):
        code = (
            "import sys; from headwater.cli import main; sys.argv[0] = 'headwater'; "
            "sys.exit(main())"
        )
        return [str(python), "-c", code, "plugins", "--json"], None
    return [str(python), "-c", FALLBACK], (
        'the `headwater plugins` CLI is not available yet: measured `python -c "import '
        'headwater; headwater.Engine().load()"` instead'
    )


def _with_cpu(metrics: dict[str, float], before: float | None) -> dict[str, float]:
    after = children_cpu_seconds()
    if before is not None and after is not None:
        metrics["cpu_seconds"] = after - before
    return metrics


def timed_listing(
    argv: list[str], env: dict[str, str], cwd: Path, expected: list[str]
) -> Callable[[], Sample]:
    """Time ``argv`` to exit; check that exactly the ``expected`` bench plugins loaded."""

    def run() -> Sample:
        cpu = children_cpu_seconds()
        start = time.perf_counter()
        proc = _run(argv, env=env, cwd=cwd)
        seconds = time.perf_counter() - start
        metrics = _with_cpu({"seconds": seconds}, cpu)
        data = json.loads(proc.stdout)
        text = json.dumps(data.get("plugins", []))
        found = sorted({m for m in expected if m in text})
        ours = [f for f in data.get("failures", []) if PREFIX in json.dumps(f)]
        if found != expected or ours or (not expected and PREFIX in text):
            raise ResultMismatch(
                f"{len(found)} of {len(expected)} generated plugins listed; failures: {ours}"
            )
        return Sample(metrics, len(found))

    return run


def run(settings: Settings, progress: Progress) -> ScenarioReport:
    """Build the environments, then time the listing in each; target: < 2x."""
    if not available("pip") or not available("venv"):
        raise RuntimeError("the discovery scenario needs pip and venv in this interpreter")
    count = settings.plugins if settings.plugins is not None else DEFAULT_PLUGINS
    rounds = settings.pick_rounds(full=10, quick=5)
    warmup = settings.pick_warmup(1)
    with tempfile.TemporaryDirectory(prefix="headwater-bench-discovery-") as tmp:
        root = Path(tmp)
        progress("creating the virtual environments")
        bare = make_venv(root / "venv-none")
        full = make_venv(root / "venv-plugins")
        projects = write_plugins(root / "src", count)
        progress(f"installing {count} plugin distributions with pip")
        setup_start = time.perf_counter()
        if projects:
            _run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "--python",
                    str(full),
                    "install",
                    "--quiet",
                    "--no-deps",
                    "--no-build-isolation",
                    "--no-index",
                    *map(str, projects),
                ],
                cwd=root,
            )
        setup = time.perf_counter() - setup_start
        env = child_env()
        env.pop("PYTHONPATH")  # the venvs must see only what is installed in them
        for var in ("HEADWATER_DISABLE_PLUGINS", "HEADWATER_STRICT_PLUGINS"):
            env.pop(var, None)
        expected = sorted(f"{PREFIX}{i:03d}" for i in range(count))
        argv_none, note = plugins_command(bare)
        argv_full, _ = plugins_command(full)
        impls = [
            Implementation(
                "no_plugins",
                timed_listing(argv_none, env, root, []),
                compare=False,
                description="built-in plugins only",
            ),
            Implementation(
                "with_plugins",
                timed_listing(argv_full, env, root, expected),
                compare=False,
                description=f"{count} plugin distributions",
            ),
            Implementation(
                "python_pass",
                _python_pass(bare, env, root),
                compare=False,
                description="python -c pass in the venv",
            ),
        ]
        measured = measure(impls, rounds=rounds, warmup=warmup, progress=progress)
    report = ScenarioReport(
        name="discovery",
        title=TITLE.replace("50", str(count)),
        params={
            "plugins": count,
            "rounds": rounds,
            "warm-up": warmup,
            "pip install": fmt_seconds(setup),
        },
        measured=measured,
        columns=[
            Column("seconds", "time", fmt_seconds),
            Column("cpu_seconds", "process cpu", fmt_seconds, spread=False),
        ],
        descriptions={i.name: i.description for i in impls},
        baseline="no_plugins",
        ratio_metric="seconds",
        ratio_header="vs no_plugins",
        show_descriptions=True,
    )
    report.targets.append(
        report.target_ratio_below("with_plugins", "no_plugins", "seconds", RATIO_LIMIT)
    )
    if note is not None:
        report.notes.append(note)
    return report


def _python_pass(python: Path, env: dict[str, str], cwd: Path) -> Callable[[], Sample]:
    def run() -> Sample:
        cpu = children_cpu_seconds()
        start = time.perf_counter()
        _run([str(python), "-c", "pass"], env=env, cwd=cwd)
        return Sample(_with_cpu({"seconds": time.perf_counter() - start}, cpu))

    return run
