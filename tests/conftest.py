"""Shared fixtures: every async test runs on asyncio and on trio; file tools may use the
test's temporary folders and the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _sandbox_roots(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """File roots for tests: pytest's temporary folders (every ``tmp_path``) and the
    repository, through ``HEADWATER_ROOTS`` as an operator would set them, so that engines
    made in a test and the commands it starts in subprocesses read and write there (and
    nowhere else). Tests of the sandbox itself build their own policies."""
    roots = [str(tmp_path_factory.getbasetemp()), str(REPO)]
    monkeypatch.setenv("HEADWATER_ROOTS", os.pathsep.join(roots))
