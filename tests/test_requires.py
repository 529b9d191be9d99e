"""A pipeline's ``requires:`` is checked against the installed distributions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import headwater
from headwater.core.requirements import requirement_issues

BASE = {
    "name": "needs",
    "sources": {"n": {"action": "range", "params": {"stop": 2}}},
    "sinks": [{"sink": "collect"}],
}


def test_met_requirements_validate_and_run() -> None:
    spec = {**BASE, "requires": {"headwater": f"=={headwater.__version__}", "pydantic": ">=2"}}
    assert headwater.run_sync(spec).output == [0, 1]


def test_unmet_requirements_name_each_distribution_and_stop_the_run() -> None:
    spec = {**BASE, "requires": {"pydantic": "<1", "hw-no-such-dist": ">=1"}}
    with pytest.raises(headwater.PipelineValidationError) as info:
        headwater.run_sync(spec)
    messages = {issue.path: issue.message for issue in info.value.issues}
    assert "but pydantic 2." in messages["requires.pydantic"]
    assert (
        "not installed: pip install 'hw-no-such-dist>=1'" in messages["requires['hw-no-such-dist']"]
    )


def test_a_bad_range_is_a_validation_error() -> None:
    with pytest.raises(headwater.PipelineValidationError, match="'two' is not a version range"):
        headwater.parse_pipeline({**BASE, "requires": {"headwater": "two"}})


def test_no_requirements_cost_nothing() -> None:
    assert requirement_issues({}) == []


def test_validate_reports_unmet_requirements(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: needs\nrequires: {pydantic: '<1'}\n"
        "sources: {n: {action: range, params: {stop: 2}}}\nsinks: [{sink: collect}]\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "headwater", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "requires.pydantic: needs pydantic<1, but pydantic 2." in done.stderr
    assert "Traceback" not in done.stderr
