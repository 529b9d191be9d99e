"""Real plugin distributions, pip-installed into a temporary virtual environment.

The distributions under ``tests/plugin_dists/`` are built and installed with pip exactly
as a third party's would be: one healthy plugin and three broken ones (an import error, a
duplicate component name, a hook that raises). headwater must list the healthy plugin,
report each broken one with its distribution and error, and keep working.

The virtual environment is created without pip or system site-packages; a ``.pth`` file
makes the current environment's site-packages (headwater, its dependencies, pip and the
hatchling build backend) importable behind the venv's own, so nothing is downloaded and
the installed plugins are visible only inside the venv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import time
import venv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DISTS = Path(__file__).parent / "plugin_dists"
PLUGIN_DISTS = ("hw-good", "hw-importerror", "hw-shadow", "hw-raising")

pytestmark = pytest.mark.slow  # builds a virtual environment and installs into it


@dataclass(frozen=True)
class PluginVenv:
    """A virtual environment with the test plugin distributions installed."""

    root: Path
    python: Path
    workdir: Path
    setup_seconds: float

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the venv's python with ``args``, without any HEADWATER_* settings."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
        environ.pop("PYTHONPATH", None)
        environ.update(env or {})
        proc = subprocess.run(
            [str(self.python), *args],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=environ,
            timeout=180,
            check=False,
        )
        if check:
            assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stderr}"
        return proc

    def headwater_json(
        self, *args: str, env: Mapping[str, str] | None = None, expect_rc: int = 0
    ) -> Any:
        """Run ``python -m headwater ARGS --json`` and parse its output."""
        proc = self.run("-m", "headwater", *args, "--json", env=env, check=False)
        assert proc.returncode == expect_rc, proc.stderr
        return json.loads(proc.stdout)


def _parent_site_dirs() -> list[str]:
    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if Path(d).is_dir()]


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> PluginVenv:
    pytest.importorskip("pip", reason="installing the test plugins needs pip")
    pytest.importorskip(
        "hatchling", reason="building the test plugins offline needs hatchling installed"
    )
    started = time.perf_counter()
    base = tmp_path_factory.mktemp("plugin-venv")
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
    ).stdout.strip()
    lines = [f"import site; site.addsitedir({d!r})" for d in _parent_site_dirs()]
    Path(purelib, "_headwater_test_parent.pth").write_text("\n".join(lines) + "\n")

    # Build from copies so that the source tree stays clean.
    sources = base / "dists"
    shutil.copytree(DISTS, sources, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    workdir = base / "work"
    workdir.mkdir()
    env = PluginVenv(root, python, workdir, 0.0)
    env.run(
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        *(str(sources / name) for name in PLUGIN_DISTS),
    )
    return PluginVenv(root, python, workdir, time.perf_counter() - started)


def by_distribution(items: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    grouped: dict[str | None, list[dict[str, Any]]] = {}
    for item in items:
        grouped.setdefault(item["distribution"], []).append(item)
    return grouped


def test_plugins_are_installed_only_in_the_venv(plugin_venv: PluginVenv) -> None:
    proc = plugin_venv.run(
        "-c",
        "import importlib.metadata as m; "
        "print(sorted(d.metadata['Name'] for d in m.distributions() "
        "if d.metadata['Name'].startswith('hw-')))",
    )
    assert proc.stdout.strip() == str(sorted(PLUGIN_DISTS))
    assert importlib.util.find_spec("hw_good") is None  # not leaked into this environment


def test_plugins_json_lists_good_plugin_and_reports_broken_ones(plugin_venv: PluginVenv) -> None:
    listing = plugin_venv.headwater_json("plugins")

    plugins = {p["name"]: p for p in listing["plugins"]}
    good = plugins["hw_good"]
    assert good["distribution"] == "hw-good"
    assert good["version"] == "1.2.3"
    assert good["module"] == "hw_good"
    assert sorted(good["components"]) == ["action:hw_good.count", "transformer:hw_good.square"]
    assert not good["disabled"]
    # the built-ins keep working next to broken plugins
    for builtin in ("headwater.sources", "headwater.transformers", "headwater.sinks"):
        assert plugins[builtin]["distribution"] == "headwater"

    components = {(c["kind"], c["name"]): c for c in listing["components"]}
    count = components[("action", "hw_good.count")]
    assert (count["plugin"], count["distribution"], count["version"]) == (
        "hw_good",
        "hw-good",
        "1.2.3",
    )
    assert count["description"] == "Count from zero up to ``stop`` (exclusive)."
    assert count["params_schema"]["required"] == ["stop"]
    assert components[("transformer", "hw_good.square")]["distribution"] == "hw-good"
    assert ("sink", "hw_shadow.sink") not in components

    failures = by_distribution(listing["failures"])
    assert sorted(d for d in failures if d and d.startswith("hw-")) == [
        "hw-importerror",
        "hw-raising",
        "hw-shadow",
    ]

    [importerror] = failures["hw-importerror"]
    assert importerror["plugin"] == "hw_importerror"
    assert importerror["version"] == "0.1.0"
    assert importerror["stage"] == "import"
    assert importerror["error"] == (
        "ImportError: hw_importerror needs libfrobnicate, which is not installed"
    )

    [duplicate] = failures["hw-shadow"]
    assert duplicate["plugin"] == "hw_shadow"
    assert duplicate["stage"] == "duplicate"
    assert duplicate["error"] == "action 'hw_good.count' is already registered by plugin 'hw_good'"

    [raising] = failures["hw-raising"]
    assert raising["plugin"] == "hw_raising"
    assert raising["stage"] == "hook"
    assert raising["error"] == (
        "register_sinks raised RuntimeError: hw-raising could not reach its sink backend"
    )


def test_human_listing_names_distributions_and_errors(plugin_venv: PluginVenv) -> None:
    proc = plugin_venv.run("-m", "headwater", "plugins")
    text = proc.stdout + proc.stderr
    for expected in ("hw_good.count", "hw-good", "hw-importerror", "libfrobnicate", "hw-raising"):
        assert expected in text
    assert "Traceback" not in text


def test_strict_mode_makes_broken_plugins_an_error(plugin_venv: PluginVenv) -> None:
    listing = plugin_venv.headwater_json(
        "plugins", env={"HEADWATER_STRICT_PLUGINS": "1"}, expect_rc=2
    )
    assert len([f for f in listing["failures"] if f["distribution"].startswith("hw-")]) == 3


def test_disabling_broken_plugins_by_name_and_distribution(plugin_venv: PluginVenv) -> None:
    listing = plugin_venv.headwater_json(
        "plugins", env={"HEADWATER_DISABLE_PLUGINS": "hw-importerror,hw_raising,hw-shadow"}
    )
    assert [f for f in listing["failures"] if f["distribution"].startswith("hw-")] == []
    disabled = {p["name"] for p in listing["plugins"] if p["disabled"]}
    assert disabled == {"hw_importerror", "hw_raising", "hw_shadow"}
    # a disabled plugin is not even imported, so its import error never happens
    proc = plugin_venv.run(
        "-c",
        "import sys, headwater; pm = headwater.Engine().load(); "
        "print('hw_importerror' in sys.modules, 'hw_shadow' in sys.modules)",
        env={"HEADWATER_DISABLE_PLUGINS": "hw-importerror,hw-shadow"},
    )
    assert proc.stdout.split() == ["False", "False"]


def test_pipeline_using_the_installed_plugin_runs(plugin_venv: PluginVenv) -> None:
    pipeline = plugin_venv.workdir / "squares.yaml"
    pipeline.write_text(
        "name: squares\n"
        "sources: {n: {action: hw_good.count, params: {stop: 5}}}\n"
        "steps: [{transformer: hw_good.square}]\n"
        "sinks: [{sink: collect}]\n",
        encoding="utf-8",
    )
    result = plugin_venv.headwater_json("run", str(pipeline), "--no-progress")
    assert result["state"] == "succeeded"
    assert result["outputs"] == {"collect": [0, 1, 4, 9, 16]}

    # and from Python, through the public API
    proc = plugin_venv.run(
        "-c",
        "import json, headwater; "
        "r = headwater.Pipeline('s').source('hw_good.count', stop=4)"
        ".step('hw_good.square').sink('collect').run_sync(); "
        "print(json.dumps([r.state, r.output]))",
    )
    assert json.loads(proc.stdout) == ["succeeded", [0, 1, 4, 9]]


def test_invalid_params_for_the_installed_plugin(plugin_venv: PluginVenv) -> None:
    pipeline = plugin_venv.workdir / "bad.yaml"
    pipeline.write_text(
        "name: bad\nsources: {n: {action: hw_good.cuont, params: {}}}\nsinks: [{sink: collect}]\n",
        encoding="utf-8",
    )
    proc = plugin_venv.run("-m", "headwater", "validate", str(pipeline), check=False)
    assert proc.returncode == 2
    assert "sources.n.action" in proc.stderr
    assert "did you mean 'hw_good.count'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugin_authors_pytest_fixtures_work_for_an_installed_plugin(
    plugin_venv: PluginVenv,
) -> None:
    """hw-good's own tests use the ``pytest11`` fixtures shipped by headwater."""
    # a copy outside this repository, so that neither its pytest settings nor the
    # conftest.py hiding the plugin distributions from this suite apply
    tests = plugin_venv.workdir / "hw-good-tests"
    shutil.copytree(DISTS / "hw-good" / "tests", tests, dirs_exist_ok=True)
    proc = plugin_venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
