"""Temporary virtual environments with real distributions pip-installed, for tests.

The same approach as ``tests/test_plugin_venv.py``: the venv is created without pip and
without system site-packages; a ``.pth`` file makes this environment's site-packages
(headwater, its dependencies, pip, pytest and the hatchling build backend) importable
behind the venv's own, so nothing is downloaded and whatever is installed into the venv
is visible only inside it. Distributions are built from copies of their source trees,
so the repository stays clean.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import venv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PluginVenv", "make_plugin_venv"]

TIMEOUT = 180
"""Seconds one command in the venv may take; only reached when something hangs."""


@dataclass(frozen=True)
class PluginVenv:
    """A virtual environment with some distributions installed."""

    root: Path
    python: Path
    workdir: Path

    def environ(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment without HEADWATER_* settings and PYTHONPATH."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
        environ.pop("PYTHONPATH", None)
        environ.update(env or {})
        return environ

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the venv's python with ``args``."""
        proc = subprocess.run(
            [str(self.python), *args],
            capture_output=True,
            text=True,
            cwd=cwd or self.workdir,
            env=self.environ(env),
            timeout=TIMEOUT,
            check=False,
        )
        if check:
            assert proc.returncode == 0, (
                f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def headwater_json(self, *args: str, env: Mapping[str, str] | None = None) -> Any:
        """Run ``python -m headwater ARGS --json``; it must succeed; parse its output."""
        proc = self.run("-m", "headwater", *args, "--json", env=env, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def pip_install(self, *targets: Path | str, editable: bool = False) -> None:
        """``pip install`` offline, exactly as a third party would (from source trees)."""
        args = ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
        args += ["--disable-pip-version-check", "--no-input", "--quiet"]
        for target in targets:
            args += ["-e", str(target)] if editable else [str(target)]
        self.run(*args)


def _parent_site_dirs() -> list[str]:
    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if Path(d).is_dir()]


def make_plugin_venv(
    base: Path, sources: Iterable[Path] = (), *, editable: bool = False
) -> PluginVenv:
    """Create a venv under ``base`` and pip-install copies of the ``sources`` trees into it.

    Skips the test when pip or hatchling (needed to build offline) is not installed.
    """
    pytest.importorskip("pip", reason="installing distributions needs pip")
    pytest.importorskip("hatchling", reason="building distributions offline needs hatchling")
    root = base / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False, symlinks=os.name != "nt").create(
        root
    )
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=TIMEOUT,
    ).stdout.strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in _parent_site_dirs()]
    Path(purelib, "_headwater_test_parent.pth").write_text("\n".join(lines) + "\n")
    workdir = base / "work"
    workdir.mkdir()
    env = PluginVenv(root, python, workdir)
    copies = []
    for source in sources:
        copy = base / "src" / source.name
        shutil.copytree(
            source,
            copy,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache"),
        )
        copies.append(copy)
    if copies:
        env.pip_install(*copies, editable=editable)
    return env
