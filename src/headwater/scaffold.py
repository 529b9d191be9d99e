"""``headwater new-plugin``: scaffold a plugin distribution that works at once.

:func:`create_plugin` writes a package with a ``pyproject.toml`` declaring the
``headwater`` entry point, a plugin module with a sample streaming action (a pydantic
params model, progress, cancellation, a resume offset) and a test suite using the
``headwater.testing`` fixtures and ``assert_conforms``. After ``pip install -e ".[test]"``
its tests pass and ``headwater plugins`` lists it.

The package depends on ``headwater`` without a version bound: pip is satisfied by the
headwater already installed (from the package index, or from a checkout with
``pip install -e .``), so installing the plugin never needs to fetch headwater.
"""

from __future__ import annotations

import keyword
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from string import Template

from . import __version__

__all__ = ["PluginNames", "ScaffoldError", "ScaffoldResult", "create_plugin", "plugin_names"]

_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
"""A valid distribution name (PEP 508)."""


class ScaffoldError(ValueError):
    """The plugin cannot be created: a bad name, or the target directory is not empty."""


@dataclass(frozen=True, slots=True)
class PluginNames:
    """The names derived from what the user typed."""

    distribution: str
    """Normalized distribution name, e.g. ``acme-weather``."""
    package: str
    """Import package and entry-point name, e.g. ``acme_weather``."""
    prefix: str
    """Prefix of the component names, e.g. ``acme_weather`` (``headwater-`` dropped)."""


@dataclass(frozen=True, slots=True)
class ScaffoldResult:
    """What :func:`create_plugin` made."""

    names: PluginNames
    root: Path
    files: tuple[Path, ...]
    """Created files, relative to ``root``."""

    @property
    def action(self) -> str:
        """Name of the sample action."""
        return f"{self.names.prefix}.count"


def plugin_names(name: str) -> PluginNames:
    """Derive the distribution, package and component prefix from ``name``.

    :raises ScaffoldError: When ``name`` is not a valid distribution name, or its package
        name would shadow a standard library module or headwater itself.
    """
    name = name.strip()
    if not _NAME.match(name):
        raise ScaffoldError(
            f"{name!r} is not a valid plugin name: use letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit (e.g. acme-weather)"
        )
    distribution = re.sub(r"[-_.]+", "-", name).lower()
    package = distribution.replace("-", "_")
    if package[0].isdigit() or keyword.iskeyword(package):
        raise ScaffoldError(f"{name!r} does not make a valid Python package name ({package!r})")
    if package == "headwater" or package in sys.stdlib_module_names:
        raise ScaffoldError(f"package name {package!r} would shadow an existing module")
    prefix = package.removeprefix("headwater_") or package
    return PluginNames(distribution, package, prefix)


_PYPROJECT = Template("""\
[build-system]
requires = ["hatchling>=1.21"]
build-backend = "hatchling.build"

[project]
name = "$distribution"
version = "0.1.0"
description = "A headwater plugin: $prefix.count streams numbers."
readme = "README.md"
requires-python = ">=3.11"
# no lower bound: the headwater already installed (released, or a checkout installed with
# pip install -e .) satisfies it; once you publish, you may pin e.g. "headwater>=$headwater"
dependencies = ["headwater"]

[project.optional-dependencies]
test = ["pytest>=8"]

# headwater finds plugins through this entry-point group: name = "importable.module"
[project.entry-points.headwater]
$package = "$package"

[tool.hatch.build.targets.wheel]
packages = ["src/$package"]

[tool.hatch.build]
# editable installs put src/ on sys.path with a .pth file (no extra build dependency)
dev-mode-dirs = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]

[tool.ruff]
line-length = 100
""")

_README = Template("""\
# $distribution

A [headwater](https://pypi.org/project/headwater/) plugin. It contributes the stream
action `$prefix.count`.

```bash
python -m pip install -e ".[test]"   # install it (and pytest) into your environment
python -m pytest                     # run its tests
headwater plugins                    # $package is listed, with its distribution
headwater describe $prefix.count     # its params
headwater plugins --check $distribution   # conformance checks and a sample run
```

A pipeline using it:

```yaml
name: count
sources:
  numbers: {action: $prefix.count, params: {stop: 5}}
sinks:
  - {sink: stdout}
```

Edit `src/$package/__init__.py` to add actions, transformers and sinks; register each in
the matching `register_*` hook.
""")

_MODULE = Template('''\
"""$distribution: a headwater plugin.

headwater imports this module through the ``headwater`` entry point declared in
``pyproject.toml`` and calls its ``register_*`` hooks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import headwater
from headwater import Register
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CountParams", "count", "register_actions"]


class CountParams(BaseModel):
    """Params of ``$prefix.count``."""

    model_config = ConfigDict(extra="forbid")

    stop: int = Field(ge=0, description="Count from 0 up to this number (exclusive).")
    start_at: int = Field(0, ge=0, description="First number to emit (to resume a run).")
    delay: float = Field(0.0, ge=0, le=60, description="Seconds to wait between numbers.")


@headwater.action(
    "$prefix.count",
    params=CountParams,
    output="the integers start_at, ..., stop - 1",
    capabilities=("progress",),
    sample_params={"stop": 5},  # headwater plugins --check runs it with these
)
async def count(params: CountParams, ctx: headwater.StreamContext) -> AsyncIterator[int]:
    """Count from ``start_at`` up to ``stop`` (exclusive), reporting progress."""
    emitted = 0
    try:
        for number in range(params.start_at, params.stop):
            if ctx.cancelled:  # stop promptly when the run is cancelled
                return
            if params.delay:
                await anyio.sleep(params.delay)
            yield number
            emitted += 1
            ctx.progress(number + 1, params.stop)
    finally:
        # runs on success, error and cancellation: release files, connections, ... here
        ctx.logger.debug("$prefix.count emitted %d numbers", emitted)


@headwater.hookimpl
def register_actions(register: Register) -> None:
    """Contribute this plugin's actions."""
    register(count)
''')

_TEST = Template('''\
"""Tests of the $package plugin, with the pytest fixtures headwater ships."""

from __future__ import annotations

import headwater
import pytest
from headwater.testing import RegisterPlugin, assert_conforms, run_pipeline

import $package

ACTION = "$prefix.count"


def test_the_plugin_registers_its_action(register_plugin: RegisterPlugin) -> None:
    info = register_plugin($package)
    assert info.components == [f"action:{ACTION}"]


def test_count_streams_numbers(register_plugin: RegisterPlugin) -> None:
    register_plugin($package)
    pipeline = headwater.Pipeline("count").source(ACTION, stop=4).sink("collect")
    assert run_pipeline(pipeline).output == [0, 1, 2, 3]


def test_count_resumes_from_start_at(register_plugin: RegisterPlugin) -> None:
    register_plugin($package)
    pipeline = headwater.Pipeline("count").source(ACTION, stop=5, start_at=3).sink("collect")
    assert run_pipeline(pipeline).output == [3, 4]


def test_count_conforms() -> None:
    # cancellation, progress, timeout, ...: the checks of headwater plugins --check
    assert_conforms(ACTION, params={"stop": 3}, plugins=[$package])


def test_invalid_params_are_reported(register_plugin: RegisterPlugin) -> None:
    register_plugin($package)
    pipeline = headwater.Pipeline("count").source(ACTION, stop=-1).sink("collect")
    with pytest.raises(headwater.PipelineValidationError, match="stop"):
        run_pipeline(pipeline)
''')

_GITIGNORE = """\
__pycache__/
*.egg-info/
.pytest_cache/
dist/
build/
"""


def create_plugin(name: str, directory: str | os.PathLike[str] | None = None) -> ScaffoldResult:
    """Create a plugin distribution named ``name``.

    :param name: The distribution name, e.g. ``acme-weather``.
    :param directory: The directory to create (default: ``./NAME``). It may exist if it
        is empty.
    :raises ScaffoldError: For an invalid name or a non-empty target directory.
    """
    names = plugin_names(name)
    root = Path(directory) if directory is not None else Path(names.distribution)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ScaffoldError(f"{root} already exists and is not an empty directory")
    values = {
        "distribution": names.distribution,
        "package": names.package,
        "prefix": names.prefix,
        "headwater": ".".join(__version__.split(".")[:2]),
    }
    contents = {
        Path("pyproject.toml"): _PYPROJECT.substitute(values),
        Path("README.md"): _README.substitute(values),
        Path(".gitignore"): _GITIGNORE,
        Path("src", names.package, "__init__.py"): _MODULE.substitute(values),
        Path("src", names.package, "py.typed"): "",
        Path("tests", f"test_{names.package}.py"): _TEST.substitute(values),
    }
    for relative, text in contents.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return ScaffoldResult(names, root, tuple(contents))
