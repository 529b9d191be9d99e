"""The registry of scenarios: name -> module.

Each module defines ``TITLE`` (one line), ``DESCRIPTION`` (a paragraph for
``--list``) and ``run(settings, progress) -> ScenarioReport``. Modules are imported only
when their scenario runs, so a scenario's peers cost nothing to the others.

To add a scenario (fan-out, checkpoint, metrics, scheduler, ...): write
``benchmarks/scenarios/<name>.py`` with those three names, add one line below, and
describe it and its targets in ``benchmarks/README.md``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Protocol, cast

from ..harness import ScenarioReport, Settings

__all__ = ["SCENARIOS", "Progress", "ScenarioModule", "load"]

SCENARIOS: dict[str, str] = {
    "throughput": "throughput",
    "first-item": "first_item",
    "memory": "memory",
    "server-memory": "server_memory",
    "discovery": "discovery",
    "fanout": "fanout",
    "workers": "workers",
    "checkpoint": "checkpoint",
    "postgres": "postgres",
    "metrics": "metrics",
    "embedding": "embedding",
    "expr": "expr",
    "windows": "windows",
    "webhook": "webhook",
    "knowledge": "knowledge",
    "run-history": "run_history",
}
"""Scenario name (as typed on the command line) -> module name in this package.

The order is the order in which ``python -m benchmarks`` runs them.
"""


class Progress(Protocol):
    """Receives short status lines while a scenario runs."""

    def __call__(self, message: str) -> None: ...


class ScenarioModule(Protocol):
    """What a scenario module provides."""

    TITLE: str
    DESCRIPTION: str

    def run(self, settings: Settings, progress: Progress) -> ScenarioReport: ...


def load(name: str) -> ScenarioModule:
    """Import the module of scenario ``name``."""
    return cast(ScenarioModule, import_module(f".{SCENARIOS[name]}", __name__))
