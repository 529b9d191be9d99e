"""Every Python code block in the user docs runs, and every pipeline YAML block validates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import headwater
from headwater.core.api import prepare

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(page.read_text()) if lang == language]


PAGES = sorted(DOCS.glob("*.md"))
WITH_PYTHON = [p for p in PAGES if blocks(p, "python")]
WITH_YAML = [p for p in PAGES if blocks(p, "yaml")]


def test_tutorials_have_code() -> None:
    assert {"getting-started.md", "writing-plugins.md", "embedding.md"} <= {
        p.name for p in WITH_PYTHON
    }


@pytest.mark.parametrize("page", WITH_PYTHON, ids=lambda p: p.name)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = blocks(page, "python")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{page.name}[python block {i}]", "exec"), namespace)
        except Exception as exc:  # re-raised with the block for a readable failure
            raise AssertionError(f"{page.name}, python block {i} failed:\n{block}") from exc


@pytest.mark.parametrize("page", WITH_YAML, ids=lambda p: p.name)
def test_pipeline_yaml_blocks_validate(page: Path) -> None:
    pipelines = [yaml.safe_load(b) for b in blocks(page, "yaml")]
    pipelines = [p for p in pipelines if isinstance(p, dict) and "sources" in p]
    assert pipelines, f"{page.name} has YAML blocks but no pipeline"
    for data in pipelines:
        prepare(headwater.parse_pipeline(data))


def test_every_page_is_in_the_nav() -> None:
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    for page in PAGES:
        assert page.name in nav, f"{page.name} is missing from mkdocs.yml nav"
